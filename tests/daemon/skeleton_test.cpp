// The walking skeleton end to end: the real daemon on a temporary socket, called through the
// real imagectl.
#include <sys/stat.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include "process.h"

namespace imaged::test {
namespace {

class SkeletonTest : public ::testing::Test {
 protected:
  std::string socket() const { return (dir_.path() / "imaged.sock").string(); }
  // The daemon with its image set in the temp dir; no image is created by these tests.
  std::vector<std::string> Daemon() const {
    return {IMAGED_BIN, "--socket", socket(), "--data-dir", (dir_.path() / "data").string(),
            "--metadata-dir", (dir_.path() / "metadata").string()};
  }
  TempDir dir_;
};

TEST_F(SkeletonTest, ImagectlVersionReachesDaemon) {
  DaemonProcess daemon(Daemon(), dir_.path());
  ASSERT_TRUE(daemon.ready());
  auto result = RunCommand({IMAGECTL_BIN, "--socket", socket(), "version"});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("server: imaged 0."), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("api 2"), std::string::npos) << result.out;
}

TEST_F(SkeletonTest, ImagectlVersionJsonIsParseable) {
  DaemonProcess daemon(Daemon(), dir_.path());
  ASSERT_TRUE(daemon.ready());
  auto result = RunCommand({IMAGECTL_BIN, "--socket", socket(), "--json", "version"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("\"api_version\": 2"), std::string::npos) << result.out;
}

TEST_F(SkeletonTest, HealthReportsServing) {
  DaemonProcess daemon(Daemon(), dir_.path());
  ASSERT_TRUE(daemon.ready());
  auto result = RunCommand({IMAGECTL_BIN, "--socket", socket(), "health"});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("serving"), std::string::npos);
}

TEST_F(SkeletonTest, SocketHasMode0660) {
  DaemonProcess daemon(Daemon(), dir_.path());
  ASSERT_TRUE(daemon.ready());
  struct stat st {};
  ASSERT_EQ(stat(socket().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST_F(SkeletonTest, UnreachableDaemonGivesExitCode3) {
  auto result = RunCommand({IMAGECTL_BIN, "--socket", socket(), "--timeout", "2", "version"});
  EXPECT_EQ(result.exit_code, 3) << result.out << result.err;
  EXPECT_NE(result.err.find("cannot reach imaged"), std::string::npos) << result.err;
}

TEST_F(SkeletonTest, SecondDaemonOnSameSocketIsRefused) {
  DaemonProcess first(Daemon(), dir_.path());
  ASSERT_TRUE(first.ready());
  // Another image set, same socket.
  auto second = RunCommand({IMAGED_BIN, "--socket", socket(), "--data-dir",
                            (dir_.path() / "data2").string(), "--metadata-dir",
                            (dir_.path() / "metadata2").string()});
  EXPECT_EQ(second.exit_code, 1);
  EXPECT_NE(second.err.find("another imaged is serving"), std::string::npos) << second.err;
  // The first one still answers: a refused daemon must not remove the live socket.
  EXPECT_EQ(RunCommand({IMAGECTL_BIN, "--socket", socket(), "version"}).exit_code, 0);
}

TEST_F(SkeletonTest, SecondDaemonOnSameImageSetIsRefused) {
  DaemonProcess first(Daemon(), dir_.path());
  ASSERT_TRUE(first.ready());
  auto second = RunCommand({IMAGED_BIN, "--socket", (dir_.path() / "other.sock").string(),
                            "--data-dir", (dir_.path() / "data").string(), "--metadata-dir",
                            (dir_.path() / "metadata").string()});
  EXPECT_EQ(second.exit_code, 1);
  EXPECT_NE(second.err.find("another imaged manages the image set"), std::string::npos)
      << second.err;
  EXPECT_EQ(RunCommand({IMAGECTL_BIN, "--socket", socket(), "version"}).exit_code, 0);
}

TEST_F(SkeletonTest, StaleSocketFileIsTakenOver) {
  {
    DaemonProcess crashed(Daemon(), dir_.path());
    ASSERT_TRUE(crashed.ready());
    crashed.Kill();  // leaves the socket file behind
  }
  DaemonProcess daemon(Daemon(), dir_.path());
  ASSERT_TRUE(daemon.ready());
  EXPECT_EQ(RunCommand({IMAGECTL_BIN, "--socket", socket(), "version"}).exit_code, 0);
}

TEST_F(SkeletonTest, SigtermStopsCleanlyAndRemovesSocket) {
  DaemonProcess daemon(Daemon(), dir_.path());
  ASSERT_TRUE(daemon.ready());
  int status = daemon.Stop();
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_FALSE(std::filesystem::exists(socket()));
}

}  // namespace
}  // namespace imaged::test
