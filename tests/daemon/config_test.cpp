#include "daemon/config.h"

#include <gtest/gtest.h>

#include "daemon/peer.h"

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
      "map_timeout_ms = 2500\n",
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
  for (const char* text : {"data_dir = relative/path", "strategy = magic", "dm_prefix = a/b",
                           "max_piece_size = lots", "map_timeout_ms = 0",
                           "map_timeout_ms = 10s", "no equals sign"}) {
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
  PeerRegistry registry;
  registry.Record(7, PeerCredentials{10, 1000, 1000, {}});
  ASSERT_TRUE(registry.Lookup("fd:7"));
  EXPECT_EQ(registry.Lookup("fd:7")->uid, 1000u);
  EXPECT_FALSE(registry.Lookup("fd:8"));
  EXPECT_FALSE(registry.Lookup("unix:/run/x"));
  EXPECT_FALSE(registry.Lookup("fd:7x"));
  registry.Forget(7);
  EXPECT_FALSE(registry.Lookup("fd:7"));
}

}  // namespace
}  // namespace imaged
