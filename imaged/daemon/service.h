// The gRPC service: translates RPCs into library calls and library errors into gRPC statuses.
#pragma once

#include <chrono>

#include "imaged.grpc.pb.h"

namespace imaged {

class ImagedService final : public v1::Imaged::Service {
 public:
  ImagedService();

  grpc::Status Health(grpc::ServerContext* context, const v1::HealthRequest* request,
                      v1::HealthResponse* response) override;
  grpc::Status Version(grpc::ServerContext* context, const v1::VersionRequest* request,
                       v1::VersionResponse* response) override;

 private:
  std::chrono::steady_clock::time_point started_;
};

}  // namespace imaged
