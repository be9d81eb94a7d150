// imaged_list_bench create --socket S --count N [--size BYTES] [--prefix P]
// imaged_list_bench list --socket S --clients 8 --calls M [--expect N]
// A gRPC client of a running imaged. `create` makes N images through CreateImage; `list` runs
// CLIENTS threads, each with its own channel, calling ListImages M times back to back after a
// short warm-up, and prints one JSON line: p50/p99/max latency in seconds over all calls.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include "bench_util.h"
#include "imaged.grpc.pb.h"

using namespace imaged;

namespace {

std::unique_ptr<v1::Imaged::Stub> Connect(const std::string& socket) {
  grpc::ChannelArguments channel_args;
  // A distinct channel per client: otherwise gRPC shares one connection between them.
  channel_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel("unix:" + socket, grpc::InsecureChannelCredentials(),
                                           channel_args);
  return v1::Imaged::NewStub(channel);
}

int Create(const bench::Args& args) {
  auto stub = Connect(args.Str("socket"));
  const uint64_t count = args.Size("count");
  const uint64_t size = args.Size("size", 1 << 20);
  const std::string prefix = args.Str("prefix", "list-");
  const double t0 = bench::Now();
  for (uint64_t i = 0; i < count; ++i) {
    grpc::ClientContext ctx;
    v1::CreateImageRequest req;
    req.set_name(fmt::format("{}{:05}", prefix, i));
    req.set_size_bytes(size);
    auto reader = stub->CreateImage(&ctx, req);
    v1::OperationUpdate update;
    while (reader->Read(&update)) {
    }
    grpc::Status status = reader->Finish();
    if (!status.ok()) {
      bench::Die(fmt::format("CreateImage {}: {}", req.name(), status.error_message()));
    }
  }
  fmt::print("{{\"created\": {}, \"seconds\": {:.6f}}}\n", count, bench::Now() - t0);
  return 0;
}

int List(const bench::Args& args) {
  const std::string socket = args.Str("socket");
  const int clients = static_cast<int>(args.Size("clients", 8));
  const int calls = static_cast<int>(args.Size("calls", 200));
  const int64_t expect = args.Has("expect") ? static_cast<int64_t>(args.Size("expect")) : -1;
  std::vector<std::vector<double>> latencies(clients);
  std::atomic<int> failures{0};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto stub = Connect(socket);
      auto call = [&]() -> bool {
        grpc::ClientContext ctx;
        v1::ListImagesRequest req;
        v1::ListImagesResponse resp;
        grpc::Status status = stub->ListImages(&ctx, req, &resp);
        if (!status.ok()) {
          std::fprintf(stderr, "ListImages: %s\n", status.error_message().c_str());
          return false;
        }
        if (expect >= 0 && resp.images_size() < expect) {
          std::fprintf(stderr, "ListImages returned %d images, expected %ld\n",
                       resp.images_size(), static_cast<long>(expect));
          return false;
        }
        return true;
      };
      // Warm-up: connection set-up is not what is measured.
      for (int i = 0; i < 3; ++i) call();
      ready++;
      while (!go) std::this_thread::yield();
      latencies[c].reserve(calls);
      for (int i = 0; i < calls; ++i) {
        double t = bench::Now();
        if (!call()) failures++;
        latencies[c].push_back(bench::Now() - t);
      }
    });
  }
  while (ready < clients) std::this_thread::yield();
  const double t0 = bench::Now();
  go = true;
  for (auto& t : threads) t.join();
  const double wall = bench::Now() - t0;
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  auto pct = [&](double p) {
    size_t i = static_cast<size_t>(p * static_cast<double>(all.size() - 1) + 0.5);
    return all[std::min(i, all.size() - 1)];
  };
  fmt::print("{{\"calls\": {}, \"failures\": {}, \"p50\": {:.6f}, \"p99\": {:.6f}, "
             "\"max\": {:.6f}, \"min\": {:.6f}, \"wall_s\": {:.6f}}}\n",
             all.size(), failures.load(), pct(0.50), pct(0.99), all.back(), all.front(), wall);
  // Failed calls are reported (bench/run shows them next to the verdict), not fatal, unless
  // nothing worked at all.
  return failures < static_cast<int>(all.size()) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) bench::Die("usage: imaged_list_bench create|list --key value...");
  bench::Args args(argc, argv, 2);
  const std::string mode = argv[1];
  if (mode == "create") return Create(args);
  if (mode == "list") return List(args);
  bench::Die("unknown mode " + mode);
}
