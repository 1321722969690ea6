//! OpenAPI schemas written out by hand where the derived ones cannot say what the server checks:
//! "exactly one of" (`oneOf` over `required`), "at least one of", nullable fields, number ranges
//! of `f32` vectors. The rule: a request valid per `/openapi.json` is accepted by the server (bar
//! what depends on stored data, such as a vector's dimension), and one the schema rejects is
//! rejected with a 4xx.

use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder,
    Ref, Schema, SchemaType, Type,
};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::filter::{Condition, Match, Range, MAX_CONDITIONS};
use crate::wire::{Consistency, DeleteRequest, MAX_DIM, MAX_TOKEN};

fn nullable(t: Type) -> SchemaType {
    SchemaType::from_iter([t, Type::Null])
}

/// A JSON number that fits an `f32`.
fn f32_number() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .minimum(Some(-(f32::MAX as f64)))
        .maximum(Some(f32::MAX as f64))
}

/// An object that must have `key` present with a value of type `t` (one branch of a `oneOf`).
fn has(key: &str, t: Type) -> ObjectBuilder {
    ObjectBuilder::new()
        .property(key, ObjectBuilder::new().schema_type(t))
        .required(key)
}

fn closed(o: ObjectBuilder) -> ObjectBuilder {
    o.additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

/// A vector: 1 to 65,536 numbers within ±1e16, so that its norm is within
/// [`crate::wire::MAX_NORM_SQUARED`] whatever its length (larger norms are refused, since their
/// distances could overflow). The server's own rule is the norm, not each element.
pub fn vector() -> RefOr<Schema> {
    let bound = crate::wire::VECTOR_ELEMENT_BOUND;
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(-bound))
                .maximum(Some(bound)),
        )
        .min_items(Some(1))
        .max_items(Some(MAX_DIM))
        .into()
}

/// `score_threshold`: null or a number in `f32` range.
pub fn score_threshold() -> RefOr<Schema> {
    f32_number()
        .schema_type(nullable(Type::Number))
        .description(Some("Drop hits worse than this score."))
        .into()
}

fn token(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .maximum(Some(utoipa::Number::UInt(MAX_TOKEN as usize)))
        .description(Some(description))
}

impl PartialSchema for Consistency {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Ref::from_schema_name("ConsistencyLevel"))
            .item(closed(
                ObjectBuilder::new()
                    .property(
                        "min_index",
                        token(
                            "Read-your-writes: wait (bounded) until this node has applied the \
                             index a write returned. An index past the leader's log is a 400.",
                        ),
                    )
                    .required("min_index"),
            ))
            .item(closed(
                ObjectBuilder::new()
                    .property(
                        "max_lag_ms",
                        token("Bounded staleness: answer only if caught up within T ms."),
                    )
                    .required("max_lag_ms"),
            ))
            .description(Some(
                "How fresh a read must be: \"eventual\" (default), \"linearizable\", \
                 {\"min_index\": N} or {\"max_lag_ms\": T}.",
            ))
            .into()
    }
}
impl ToSchema for Consistency {}

impl PartialSchema for Match {
    fn schema() -> RefOr<Schema> {
        let scalar = || {
            ObjectBuilder::new().schema_type(SchemaType::from_iter([
                Type::String,
                Type::Number,
                Type::Boolean,
            ]))
        };
        let base = closed(
            ObjectBuilder::new()
                .property(
                    "value",
                    scalar()
                        .schema_type(SchemaType::from_iter([
                            Type::String,
                            Type::Number,
                            Type::Boolean,
                            Type::Null,
                        ]))
                        .description(Some("Equal to this value.")),
                )
                .property(
                    "any",
                    ArrayBuilder::new()
                        .schema_type(nullable(Type::Array))
                        .items(scalar())
                        .max_items(Some(MAX_CONDITIONS))
                        .description(Some("Equal to any of these values.")),
                ),
        );
        AllOfBuilder::new()
            .item(base)
            .item(
                OneOfBuilder::new()
                    .item(
                        ObjectBuilder::new()
                            .property(
                                "value",
                                scalar().schema_type(SchemaType::from_iter([
                                    Type::String,
                                    Type::Number,
                                    Type::Boolean,
                                ])),
                            )
                            .required("value"),
                    )
                    .item(has("any", Type::Array)),
            )
            .description(Some(
                "Exactly one of {\"value\": v} and {\"any\": [v, ...]} (at most 1,024 values); \
                 values are strings, numbers or booleans.",
            ))
            .into()
    }
}
impl ToSchema for Match {}

impl PartialSchema for Range {
    fn schema() -> RefOr<Schema> {
        let bound = |d: &str| {
            ObjectBuilder::new()
                .schema_type(nullable(Type::Number))
                .description(Some(d))
        };
        let base = closed(
            ObjectBuilder::new()
                .property("gt", bound("Greater than."))
                .property("gte", bound("Greater than or equal."))
                .property("lt", bound("Less than."))
                .property("lte", bound("Less than or equal.")),
        );
        AllOfBuilder::new()
            .item(base)
            .item(
                AnyOfBuilder::new()
                    .item(has("gt", Type::Number))
                    .item(has("gte", Type::Number))
                    .item(has("lt", Type::Number))
                    .item(has("lte", Type::Number)),
            )
            .description(Some(
                "Numeric bounds: at least one of gt, gte, lt, lte; all given must hold.",
            ))
            .into()
    }
}
impl ToSchema for Range {}

impl PartialSchema for Condition {
    fn schema() -> RefOr<Schema> {
        let base = closed(
            ObjectBuilder::new()
                .property(
                    "key",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(crate::filter::MAX_KEY_LEN))
                        .description(Some(
                            "Payload key (at most 256 characters); dots walk into nested objects \
                             (`meta.lang`).",
                        )),
                )
                .required("key")
                .property(
                    "match",
                    OneOfBuilder::new()
                        .item(ObjectBuilder::new().schema_type(Type::Null))
                        .item(Ref::from_schema_name("Match")),
                )
                .property(
                    "range",
                    OneOfBuilder::new()
                        .item(ObjectBuilder::new().schema_type(Type::Null))
                        .item(Ref::from_schema_name("Range")),
                ),
        );
        AllOfBuilder::new()
            .item(base)
            .item(
                OneOfBuilder::new()
                    .item(has("match", Type::Object))
                    .item(has("range", Type::Object)),
            )
            .description(Some(
                "One condition on one payload key: exactly one of `match` and `range`.",
            ))
            .into()
    }
}
impl ToSchema for Condition {}

/// A filter with at least one condition (what a delete by filter needs).
fn non_empty_filter() -> AllOfBuilder {
    let clause = |name: &str| {
        ObjectBuilder::new()
            .property(name, ArrayBuilder::new().min_items(Some(1)))
            .required(name)
    };
    AllOfBuilder::new()
        .item(Ref::from_schema_name("Filter"))
        .item(
            AnyOfBuilder::new()
                .item(clause("must"))
                .item(clause("should"))
                .item(clause("must_not")),
        )
}

impl PartialSchema for DeleteRequest {
    fn schema() -> RefOr<Schema> {
        let base = closed(
            ObjectBuilder::new()
                .property(
                    "ids",
                    ArrayBuilder::new()
                        .schema_type(nullable(Type::Array))
                        .items(crate::wire::PointId::schema())
                        .min_items(Some(1))
                        .description(Some("Ids to delete (missing ones are ignored).")),
                )
                .property(
                    "filter",
                    OneOfBuilder::new()
                        .item(ObjectBuilder::new().schema_type(Type::Null))
                        .item(non_empty_filter().description(Some(
                            "Delete every point matching this filter (at least one condition).",
                        ))),
                ),
        );
        AllOfBuilder::new()
            .item(base)
            .item(
                OneOfBuilder::new()
                    .item(has("ids", Type::Array))
                    .item(has("filter", Type::Object)),
            )
            .description(Some(
                "Exactly one of `ids` (at least one) and `filter` (at least one condition).",
            ))
            .into()
    }
}
impl ToSchema for DeleteRequest {}
