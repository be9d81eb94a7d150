#include "daemon/config.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/peer.h"
#include "imaged/common/unique_fd.h"

namespace imaged {
namespace {

TEST(ConfigTest, DefaultsAreKeptWhenTheFileIsEmpty) {
  DaemonConfig config;
  ASSERT_TRUE(ParseConfig("", config));
  EXPECT_EQ(config.socket_path, "/run/imaged/imaged.sock");
  EXPECT_EQ(config.strategy, MapStrategy::kAuto);
}

TEST(ConfigTest, SettingsCommentsAndBlankLines) {
  DaemonConfig config;
  auto r = ParseConfig(
      "# imaged.conf\n"
      "data_dir = /srv/images   # trailing comment\n"
      "\n"
      "metadata_dir=/meta\n"
      "socket = /tmp/x.sock\r\n"
      "admin_group = disk\n"
      "strategy = loop\n"
      "dm_prefix = img-\n"
      "max_piece_size = 4G\n"
      "map_timeout_ms = 2500\n"
      "min_free_percent = 40\n"
      "min_free_bytes = 2G\n"
      "metrics_textfile = /var/lib/node-exporter/imaged.prom\n"
      "metrics_interval_s = 60\n",
      config);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(config.data_dir, "/srv/images");
  EXPECT_EQ(config.metadata_dir, "/meta");
  EXPECT_EQ(config.socket_path, "/tmp/x.sock");
  EXPECT_EQ(config.admin_group, "disk");
  EXPECT_EQ(config.strategy, MapStrategy::kLoop);
  EXPECT_EQ(config.dm_prefix, "img-");
  EXPECT_EQ(config.max_piece_size, 4ull << 30);
  EXPECT_EQ(config.map_timeout_ms, 2500u);
  EXPECT_EQ(config.min_free_percent, 40u);
  EXPECT_EQ(config.min_free_bytes, 2ull << 30);
  EXPECT_EQ(config.metrics_textfile, "/var/lib/node-exporter/imaged.prom");
  EXPECT_EQ(config.metrics_interval_s, 60u);
}

TEST(ConfigTest, KeepsFivePercentFreeUnlessTold) {
  DaemonConfig config;
  EXPECT_EQ(config.min_free_percent, 5u);
  EXPECT_EQ(config.min_free_bytes, 0u);
  ASSERT_TRUE(ParseConfig("min_free_percent = 0\n", config));
  EXPECT_EQ(config.min_free_percent, 0u);
}

TEST(ConfigTest, ErrorsNameTheLineAndChangeNothing) {
  DaemonConfig config;
  auto r = ParseConfig("data_dir = /a\nbogus = 1\n", config);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_NE(r.error().message.find("line 2"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("bogus"), std::string::npos);
  EXPECT_EQ(config.data_dir, "/var/lib/imaged/data");  // all or nothing
}

TEST(ConfigTest, RejectsBadValues) {
  for (const char* text :
       {"data_dir = relative/path", "strategy = magic", "dm_prefix = a/b", "max_piece_size = lots",
        "map_timeout_ms = 0", "map_timeout_ms = 10s", "min_free_percent = 91",
        "min_free_percent = -1", "min_free_bytes = some", "metrics_textfile = imaged.prom",
        "metrics_interval_s = 0", "no equals sign"}) {
    DaemonConfig config;
    EXPECT_FALSE(ParseConfig(text, config)) << text;
  }
}

TEST(PeerTest, RootMayChangeStateOthersOnlyThroughTheAdminGroup) {
  PeerCredentials root{1, 0, 0, {}};
  PeerCredentials user{2, 1000, 1000, {24, 27}};
  EXPECT_TRUE(MayChangeState(root, std::nullopt));
  EXPECT_FALSE(MayChangeState(user, std::nullopt));
  EXPECT_TRUE(MayChangeState(user, gid_t{27}));
  EXPECT_TRUE(MayChangeState(user, gid_t{1000}));
  EXPECT_FALSE(MayChangeState(user, gid_t{6}));
}

TEST(PeerTest, RegistryLooksUpGrpcPeerStrings) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  UniqueFd a(pair[0]), b(pair[1]);
  PeerRegistry registry;
  ASSERT_TRUE(registry.Record(a.get(), PeerCredentials{10, 1000, 1000, {}}));
  const std::string key = "fd:" + std::to_string(a.get());
  ASSERT_TRUE(registry.Lookup(key));
  EXPECT_EQ(registry.Lookup(key)->uid, 1000u);
  EXPECT_FALSE(registry.Lookup("fd:" + std::to_string(b.get())));
  EXPECT_FALSE(registry.Lookup("unix:/run/x"));
  EXPECT_FALSE(registry.Lookup(key + "x"));
}

// gRPC closes connections without telling the registry; the fd number may then name another
// file, or another connection. Neither inherits the closed one's credentials.
TEST(PeerTest, AClosedConnectionsCredentialsAreNeverHandedToWhatReusesItsFd) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  UniqueFd peer_end(pair[1]);
  const int fd = pair[0];
  PeerRegistry registry;
  ASSERT_TRUE(registry.Record(fd, PeerCredentials{10, 0, 0, {}}));
  ::close(fd);
  // The number is reused by another socket: not the recorded one.
  int again[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, again), 0);
  UniqueFd x(again[0]), y(again[1]);
  ASSERT_EQ(x.get(), fd);
  EXPECT_FALSE(registry.Lookup("fd:" + std::to_string(fd)));
  EXPECT_EQ(registry.size(), 0u);
}

TEST(PeerTest, ConnectionsPerUidAreCapped) {
  PeerRegistry registry(2);
  std::vector<UniqueFd> fds;
  for (int i = 0; i < 3; ++i) {
    int pair[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
    fds.emplace_back(pair[0]);
    fds.emplace_back(pair[1]);
  }
  EXPECT_TRUE(registry.Record(fds[0].get(), PeerCredentials{1, 1000, 1000, {}}));
  EXPECT_TRUE(registry.Record(fds[2].get(), PeerCredentials{1, 1000, 1000, {}}));
  auto third = registry.Record(fds[4].get(), PeerCredentials{1, 1000, 1000, {}});
  ASSERT_FALSE(third);
  EXPECT_EQ(third.error().code, EUSERS);
  EXPECT_TRUE(registry.Record(fds[4].get(), PeerCredentials{1, 1001, 1001, {}}));
  fds[0].reset();  // closed: its slot is free again
  EXPECT_TRUE(registry.Record(fds[1].get(), PeerCredentials{1, 1000, 1000, {}}));
}

}  // namespace
}  // namespace imaged
