// hnswlib's walk, counted: builds hnswlib (0.8.0, header-only) over the shared set in id order on
// one thread, then times each query alone on one thread at ef 16 / 32 / 64 and counts the
// distances computed, to set beside quiver's `examples/walk.rs` (README, "The graph walk").
// Prints figures; asserts nothing. CI does not build it.
//
// The counters need two lines added to hnswlib's hnswalg.h (the pip source of hnswlib 0.8.0):
//   sed -i 's|dist_t dist = fstdistfunc_(data_point, currObj1, dist_func_param_);|&
//   hnsw_dist_count++;|' hnswlib/hnswalg.h
//   sed -i 's|dist_t d = fstdistfunc_(query_data, getDataByInternalId(cand), dist_func_param_);|&
//   hnsw_up_count++;|' hnswlib/hnswalg.h
// (each on one line), then:
//   g++ -O3 -march=native -std=c++17 -I<dir holding hnswlib/> hnswlib_walk.cc -o /tmp/hw
//   /tmp/hw ../shared/data/minilm-debian <ef_construction> <rounds>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <chrono>
#include <cmath>
#include <algorithm>
#include <thread>
static long hnsw_dist_count = 0; static long hnsw_up_count = 0;
#include "hnswlib/hnswlib.h"
static std::vector<float> readf(const char* p, int& d, size_t& n) {
  FILE* f = fopen(p, "rb"); int dd; std::vector<float> out; n = 0;
  while (fread(&dd, 4, 1, f) == 1) { d = dd; size_t o = out.size(); out.resize(o + d); fread(out.data() + o, 4, d, f); n++; }
  fclose(f); return out;
}
static std::vector<int> readi(const char* p, int& d) {
  FILE* f = fopen(p, "rb"); int dd; std::vector<int> out;
  while (fread(&dd, 4, 1, f) == 1) { d = dd; size_t o = out.size(); out.resize(o + d); fread(out.data() + o, 4, d, f); }
  fclose(f); return out;
}
static void norm(float* v, int d) { double s = 0; for (int i = 0; i < d; i++) s += v[i] * v[i]; float r = 1 / std::sqrt(s); for (int i = 0; i < d; i++) v[i] *= r; }
int main(int argc, char** argv) {
  const char* dir = argv[1]; int efc = atoi(argv[2]); int rounds = atoi(argv[3]);
  int d, gd; size_t n, nq;
  auto base = readf((std::string(dir) + "/base.fvecs").c_str(), d, n);
  auto qs = readf((std::string(dir) + "/queries.fvecs").c_str(), d, nq);
  auto gt = readi((std::string(dir) + "/groundtruth.ivecs").c_str(), gd);
  for (size_t i = 0; i < n; i++) norm(&base[i * d], d);
  for (size_t i = 0; i < nq; i++) norm(&qs[i * d], d);
  hnswlib::InnerProductSpace space(d);
  hnswlib::HierarchicalNSW<float> idx(&space, n, 16, efc, 100);
  auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < n; i++) idx.addPoint(&base[i * d], i);
  double bt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  printf("built %zu in %.1f s (1 thread, ef_c %d)\n", n, bt, efc);
  int efs[] = {16, 32, 64};
  for (int r = 0; r < rounds; r++) for (int ef : efs) {
    idx.setEf(ef); hnsw_dist_count = 0; hnsw_up_count = 0; double hits = 0;
    auto t = std::chrono::steady_clock::now();
    for (size_t q = 0; q < nq; q++) {
      auto res = idx.searchKnn(&qs[q * d], 10);
      while (!res.empty()) { auto id = res.top().second; res.pop();
        for (int j = 0; j < 10; j++) if (gt[q * gd + j] == (int)id) { hits++; break; } }
    }
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    printf("up/query %.1f ", (double)hnsw_up_count / nq); printf("ef %d recall %.3f qps %.0f dists/query %.1f ns/dist %.1f\n", ef, hits / nq / 10, nq / s, (double)hnsw_dist_count / nq, s * 1e9 / hnsw_dist_count);
  }
}
