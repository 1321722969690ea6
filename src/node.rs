//! Wiring: open the engine, start the writer, bind the listener, serve until shutdown, then stop
//! cleanly (drain requests, stop indexers, dump graphs, flush sled).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{router, AppState};
use crate::config::Config;
use crate::engine::Engine;
use crate::writer::Writer;

/// A running node (for tests and embedding): its address and a way to stop it.
pub struct Node {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The engine, for in-process inspection.
    pub engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    /// Opens the data dir, binds `config.listen` and serves in the background.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let engine = open_engine(&config).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, engine.clone(), config, async move {
            let _ = stopped.await;
        }));
        Ok(Node {
            addr,
            engine,
            stop: Some(stop),
            task,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and closes the store; the data dir can be reopened afterwards.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let engine = self.engine.clone();
        drop(self.engine);
        self.task.await??;
        release(engine).await;
        Ok(())
    }
}

async fn open_engine(config: &Config) -> anyhow::Result<Arc<Engine>> {
    let opts = config.engine_options();
    let started = Instant::now();
    let engine = tokio::task::spawn_blocking(move || Engine::open(opts)).await??;
    tracing::info!(
        secs = started.elapsed().as_secs_f64(),
        collections = engine.list().len(),
        applied = engine.last_applied(),
        "store opened"
    );
    Ok(Arc::new(engine))
}

/// Waits (briefly) until no request still holds the engine, so sled's directory lock is released.
async fn release(engine: Arc<Engine>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut engine = engine;
    loop {
        match Arc::try_unwrap(engine) {
            Ok(e) => {
                let _ = tokio::task::spawn_blocking(move || drop(e)).await;
                return;
            }
            Err(e) if Instant::now() < deadline => {
                engine = e;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                tracing::warn!("engine still referenced after shutdown");
                return;
            }
        }
    }
}

async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let writer = Writer::start(engine.clone(), config.max_batch_points);
    let state = AppState {
        engine: engine.clone(),
        writer,
        config: Arc::new(config),
    };
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    let e = engine.clone();
    tokio::task::spawn_blocking(move || e.close()).await??;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Runs a node until `shutdown` resolves (the `quiver serve` entry point).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let listener = TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "quiver listening");
    let engine = open_engine(&config).await?;
    serve(listener, engine.clone(), config, shutdown).await?;
    release(engine).await;
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM (docker stop).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}
