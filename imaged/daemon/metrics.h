// The daemon's metrics in the Prometheus text format (exposition format 0.0.4): counters of
// RPCs by method and status code with their latency, image changes by kind and startup
// recovery's actions, and gauges of the images and the data filesystem. `imagectl stats`
// shows them (GetMetrics); MetricsTextfile writes them for node_exporter's textfile collector.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <grpcpp/support/server_interceptor.h>
#include <grpcpp/support/status.h>

#include "imaged/common/file_io.h"
#include "imaged/common/result.h"
#include "manager/image_manager.h"

namespace imaged {

// What the daemon sees now, rendered as gauges.
struct MetricsGauges {
  const std::vector<ImageInfo>* images = nullptr;  // nullptr: the list failed
  std::optional<SpaceUsage> space;
  size_t watches = 0;
};

class Metrics {
 public:
  Metrics();
  // One RPC ended (the interceptor calls this for every call).
  void CountCall(std::string_view method, grpc::StatusCode code, std::chrono::nanoseconds took);
  void CountChange(ImageChangeKind kind);
  void CountRecovery(const RecoveryReport& report);
  std::string Render(const MetricsGauges& gauges) const;

  // Records every call of the server it is given to (ServerBuilder's interceptor creators),
  // then runs `after_each_call` (e.g. MetricsTextfile::Poke).
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> Interceptor(
      std::function<void()> after_each_call = {});

  // The upper bounds of the latency histogram's buckets, in seconds (then +Inf).
  static constexpr double kBuckets[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300};

 private:
  struct Latency {
    uint64_t buckets[std::size(kBuckets)] = {};  // not cumulative; Render sums
    uint64_t count = 0;
    double sum_seconds = 0;
  };
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, std::string>, uint64_t> calls_;  // (method, code)
  std::map<std::string, Latency> latency_;                         // by method
  std::map<std::string, uint64_t> changes_;                        // by kind
  std::map<std::string, uint64_t> recovery_;                       // by action
  std::chrono::system_clock::time_point started_;
};

// "created", "mapped", ...: the kind as the metrics and imagectl watch name it.
std::string_view ChangeKindName(ImageChangeKind kind);

// Keeps a textfile (node_exporter's collector reads `*.prom`) up to date: written at start,
// then within `debounce` of each Poke() and at least every `interval`, always atomically
// (temp, fsync, rename). A failed write is logged once until one succeeds again.
class MetricsTextfile {
 public:
  using Render = std::function<std::string()>;
  static Result<std::unique_ptr<MetricsTextfile>> Start(
      const std::string& path, Render render,
      std::chrono::milliseconds interval = std::chrono::seconds(15),
      std::chrono::milliseconds debounce = std::chrono::milliseconds(500));
  ~MetricsTextfile();
  void Poke();

 private:
  MetricsTextfile(Directory dir, std::string name, Render render,
                  std::chrono::milliseconds interval, std::chrono::milliseconds debounce);
  void Run();
  void WriteOnce();

  Directory dir_;
  std::string name_;
  Render render_;
  std::chrono::milliseconds interval_, debounce_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool poked_ = false, stopping_ = false, failing_ = false;
  std::thread thread_;
};

}  // namespace imaged
