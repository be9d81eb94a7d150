// imagectl: the admin CLI, a thin gRPC client of imaged.
//
// Exit codes: 0 success; 1 the daemon refused or failed the operation; 2 usage error;
// 3 the daemon could not be reached.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <nlohmann/json.hpp>

#include "imaged.grpc.pb.h"
#include "imaged/version.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;

struct Context {
  std::string socket = "/run/imaged/imaged.sock";
  bool json = false;
  int timeout_seconds = 30;

  std::unique_ptr<imaged::v1::Imaged::Stub> Stub() const {
    auto channel = grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
    return imaged::v1::Imaged::NewStub(channel);
  }
  void SetDeadline(grpc::ClientContext& ctx) const {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_seconds));
  }
};

int ReportStatus(const grpc::Status& status, const Context& ctx) {
  if (status.ok()) return kExitOk;
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    fmt::print(stderr, "imagectl: cannot reach imaged on {}: {}\n", ctx.socket,
               status.error_message());
    return kExitUnreachable;
  }
  fmt::print(stderr, "imagectl: {}\n", status.error_message());
  return kExitFailed;
}

int CmdVersion(const Context& ctx) {
  grpc::ClientContext call;
  ctx.SetDeadline(call);
  imaged::v1::VersionResponse response;
  auto status = ctx.Stub()->Version(&call, imaged::v1::VersionRequest{}, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  if (ctx.json) {
    nlohmann::json out = {
        {"client", {{"version", imaged::kVersion}, {"git_revision", imaged::kGitRevision}}},
        {"server",
         {{"version", response.version()},
          {"git_revision", response.git_revision()},
          {"api_version", response.api_version()}}}};
    fmt::print("{}\n", out.dump(2));
  } else {
    fmt::print("client: imagectl {} ({})\n", imaged::kVersion, imaged::kGitRevision);
    fmt::print("server: imaged {} ({}), api {}\n", response.version(), response.git_revision(),
               response.api_version());
  }
  return kExitOk;
}

int CmdHealth(const Context& ctx) {
  grpc::ClientContext call;
  ctx.SetDeadline(call);
  imaged::v1::HealthResponse response;
  auto status = ctx.Stub()->Health(&call, imaged::v1::HealthRequest{}, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  bool serving = response.status() == imaged::v1::HealthResponse::SERVING;
  if (ctx.json) {
    fmt::print("{}\n", nlohmann::json{{"serving", serving},
                                      {"uptime_seconds", response.uptime_seconds()}}
                           .dump(2));
  } else {
    fmt::print("{} (up {} s)\n", serving ? "serving" : "not serving", response.uptime_seconds());
  }
  return serving ? kExitOk : kExitFailed;
}

}  // namespace

int main(int argc, char** argv) {
  Context ctx;
  CLI::App app{"imagectl: manage imaged's block-device images"};
  app.footer(
      "Exit codes: 0 success, 1 the daemon refused or failed the operation, 2 usage error,\n"
      "3 the daemon could not be reached.");
  app.add_option("--socket", ctx.socket, "imaged's unix socket")->capture_default_str();
  app.add_flag("--json", ctx.json, "machine-readable output");
  app.add_option("--timeout", ctx.timeout_seconds, "seconds to wait for an answer")
      ->capture_default_str();
  app.require_subcommand(1);

  int rc = kExitOk;
  app.add_subcommand("version", "print client and daemon versions")->callback([&] {
    rc = CmdVersion(ctx);
  });
  app.add_subcommand("health", "check that the daemon serves")->callback([&] {
    rc = CmdHealth(ctx);
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  return rc;
}
