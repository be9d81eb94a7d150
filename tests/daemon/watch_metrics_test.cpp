// WatchHub's fan-out rules and the metrics' text format, without a server.
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "daemon/metrics.h"
#include "daemon/watch.h"

namespace imaged {
namespace {

using namespace std::chrono_literals;
using Next = WatchHub::Watch::Next;

ImageChange Change(ImageChangeKind kind, std::string name) {
  ImageChange change;
  change.kind = kind;
  change.name = std::move(name);
  change.operation = "test";
  return change;
}

std::string NameOf(const News& news) {
  return news.name();
}

TEST(WatchHub, EveryWatchGetsTheNewsInOrderAfterItsStart) {
  WatchHub hub;
  hub.Publish(Change(ImageChangeKind::kCreated, "early"));  // before any watch: nobody's
  auto watch = hub.Begin("", 0);
  ASSERT_TRUE(watch);
  EXPECT_EQ((*watch)->start_sequence(), 1u);
  hub.Publish(Change(ImageChangeKind::kCreated, "a"));
  hub.Publish(OperationProgressNews{"import", "b", 1, 2, 0, 0});
  hub.Publish(OperationEndNews{"import", "b", true, ""});
  News news;
  ASSERT_EQ((*watch)->Wait(0ms, &news), Next::kNews);
  EXPECT_EQ(news.sequence, 2u);
  EXPECT_EQ(NameOf(news), "a");
  ASSERT_EQ((*watch)->Wait(0ms, &news), Next::kNews);
  EXPECT_TRUE(std::holds_alternative<OperationProgressNews>(news.what));
  ASSERT_EQ((*watch)->Wait(0ms, &news), Next::kNews);
  EXPECT_EQ(news.sequence, 4u);
  EXPECT_EQ((*watch)->Wait(10ms, &news), Next::kTimedOut);
}

TEST(WatchHub, AWatchOfOneImageGetsItsNewsAndTheSetsOnly) {
  WatchHub hub;
  auto watch = hub.Begin("b", 0);
  ASSERT_TRUE(watch);
  hub.Publish(Change(ImageChangeKind::kCreated, "a"));
  hub.Publish(Change(ImageChangeKind::kCreated, "b"));
  hub.Publish(Change(ImageChangeKind::kSetRebuilt, ""));
  News news;
  ASSERT_EQ((*watch)->Wait(0ms, &news), Next::kNews);
  EXPECT_EQ(NameOf(news), "b");
  ASSERT_EQ((*watch)->Wait(0ms, &news), Next::kNews);
  EXPECT_EQ(std::get<ImageChange>(news.what).kind, ImageChangeKind::kSetRebuilt);
  EXPECT_EQ((*watch)->Wait(0ms, &news), Next::kTimedOut);
}

TEST(WatchHub, ASlowWatchFallsBehindWithoutHoldingUpOthers) {
  WatchHub hub(WatchHub::Limits{4, 3, 4});
  auto slow = hub.Begin("", 0);
  auto other = hub.Begin("", 0);
  ASSERT_TRUE(slow && other);
  for (int i = 0; i < 3; ++i) hub.Publish(Change(ImageChangeKind::kMapped, "x"));
  News news;
  for (int i = 0; i < 3; ++i) ASSERT_EQ((*other)->Wait(0ms, &news), Next::kNews);
  for (int i = 0; i < 2; ++i) hub.Publish(Change(ImageChangeKind::kUnmapped, "x"));
  EXPECT_EQ((*slow)->Wait(0ms, &news), Next::kFellBehind);
  EXPECT_EQ((*slow)->dropped(), 5u);
  for (int i = 0; i < 2; ++i) EXPECT_EQ((*other)->Wait(0ms, &news), Next::kNews);
}

TEST(WatchHub, WatchesAreBoundedAndEndWhenTheHubCloses) {
  WatchHub hub(WatchHub::Limits{2, 10, 2});
  auto one = hub.Begin("", 0);
  auto two = hub.Begin("", 0);
  ASSERT_TRUE(one && two);
  auto three = hub.Begin("", 0);
  ASSERT_FALSE(three);
  EXPECT_EQ(three.error().code, EAGAIN);
  two->reset();
  EXPECT_EQ(hub.watches(), 1u);
  EXPECT_TRUE(hub.Begin("", 0));  // a freed place is taken again

  News news;
  std::thread closer([&] {
    std::this_thread::sleep_for(50ms);
    hub.Close();
  });
  EXPECT_EQ((*one)->Wait(10s, &news), Next::kClosed);  // woken, not timed out
  closer.join();
  EXPECT_FALSE(hub.Begin("", 0));
}

TEST(WatchHub, OneUserCannotTakeEveryPlace) {
  WatchHub hub(WatchHub::Limits{4, 10, 2});
  auto a1 = hub.Begin("", 1000);
  auto a2 = hub.Begin("", 1000);
  ASSERT_TRUE(a1 && a2);
  auto a3 = hub.Begin("", 1000);
  ASSERT_FALSE(a3);
  EXPECT_EQ(a3.error().code, EAGAIN);
  EXPECT_NE(a3.error().message.find("uid 1000"), std::string::npos) << a3.error().message;
  EXPECT_TRUE(hub.Begin("", 0));  // another user still gets one
}

double Value(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(series + " ")) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

TEST(Metrics, HistogramBucketsAreCumulativeAndEndAtTheCount) {
  Metrics metrics;
  metrics.CountCall("CreateImage", grpc::StatusCode::OK, 2ms);
  metrics.CountCall("CreateImage", grpc::StatusCode::OK, 700ms);
  metrics.CountCall("CreateImage", grpc::StatusCode::RESOURCE_EXHAUSTED, 1h);
  const std::string text = metrics.Render({});
  EXPECT_EQ(Value(text, R"(imaged_rpcs_total{method="CreateImage",code="OK"})"), 2);
  EXPECT_EQ(Value(text, R"(imaged_rpcs_total{method="CreateImage",code="RESOURCE_EXHAUSTED"})"), 1);
  const std::string bucket = R"(imaged_rpc_duration_seconds_bucket{method="CreateImage",le=)";
  EXPECT_EQ(Value(text, bucket + R"("0.001"})"), 0);
  EXPECT_EQ(Value(text, bucket + R"("0.005"})"), 1);
  EXPECT_EQ(Value(text, bucket + R"("0.5"})"), 1);
  EXPECT_EQ(Value(text, bucket + R"("1"})"), 2);
  EXPECT_EQ(Value(text, bucket + R"("300"})"), 2);
  EXPECT_EQ(Value(text, bucket + R"("+Inf"})"), 3);
  EXPECT_NEAR(Value(text, R"(imaged_rpc_duration_seconds_sum{method="CreateImage"})"), 3600.702,
              1e-6);
}

TEST(Metrics, GaugesSumTheImagesAndRecoveryCountsItsActions) {
  Metrics metrics;
  std::vector<ImageInfo> images(2);
  images[0].size_bytes = 1 << 20;
  images[0].pieces = 1;
  images[0].mapped_device = "/dev/loop7";
  images[1].size_bytes = 3 << 20;
  images[1].pieces = 2;
  images[1].readonly = true;
  RecoveryReport report;
  report.adopted = {"a", "b"};
  report.problems = {"x"};
  metrics.CountRecovery(report);
  metrics.CountChange(ImageChangeKind::kZeroFilled);
  MetricsGauges gauges;
  gauges.images = &images;
  gauges.space = SpaceUsage{100, 40, 5};
  gauges.watches = 3;
  const std::string text = metrics.Render(gauges);
  EXPECT_EQ(Value(text, R"(imaged_images{state="all"})"), 2);
  EXPECT_EQ(Value(text, R"(imaged_images{state="mapped"})"), 1);
  EXPECT_EQ(Value(text, R"(imaged_images{state="readonly"})"), 1);
  EXPECT_EQ(Value(text, "imaged_image_bytes"), 4 << 20);
  EXPECT_EQ(Value(text, "imaged_image_pieces"), 3);
  EXPECT_EQ(Value(text, R"(imaged_data_fs_bytes{kind="free"})"), 40);
  EXPECT_EQ(Value(text, "imaged_watches"), 3);
  EXPECT_EQ(Value(text, R"(imaged_recovery_actions_total{action="adopted"})"), 2);
  EXPECT_EQ(Value(text, R"(imaged_recovery_actions_total{action="problem"})"), 1);
  EXPECT_EQ(Value(text, R"(imaged_image_changes_total{kind="zero-filled"})"), 1);
  // Without a list (it failed) there are no image gauges rather than zeros.
  EXPECT_EQ(Value(metrics.Render({}), R"(imaged_images{state="all"})"), -1);
}

TEST(Metrics, EveryFamilyHasOneHelpAndTypeBeforeItsSamples) {
  Metrics metrics;
  metrics.CountCall("ListImages", grpc::StatusCode::OK, 1ms);
  std::istringstream in(metrics.Render({}));
  std::set<std::string> typed;
  std::string family;
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("# TYPE ")) {
      family = line.substr(7, line.find(' ', 7) - 7);
      EXPECT_TRUE(typed.insert(family).second) << "twice: " << family;
      continue;
    }
    if (line.starts_with("#")) continue;
    const std::string name = line.substr(0, line.find_first_of("{ "));
    EXPECT_TRUE(name.starts_with(family)) << name << " outside its family " << family;
  }
}

}  // namespace
}  // namespace imaged
