#include "daemon/service.h"

#include "imaged/version.h"

namespace imaged {

ImagedService::ImagedService() : started_(std::chrono::steady_clock::now()) {}

grpc::Status ImagedService::Health(grpc::ServerContext*, const v1::HealthRequest*,
                                   v1::HealthResponse* response) {
  response->set_status(v1::HealthResponse::SERVING);
  auto up = std::chrono::steady_clock::now() - started_;
  response->set_uptime_seconds(
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(up).count()));
  return grpc::Status::OK;
}

grpc::Status ImagedService::Version(grpc::ServerContext*, const v1::VersionRequest*,
                                    v1::VersionResponse* response) {
  response->set_version(kVersion);
  response->set_git_revision(kGitRevision);
  response->set_api_version(kApiVersion);
  return grpc::Status::OK;
}

}  // namespace imaged
