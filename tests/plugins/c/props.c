/*
 * props: which properties a plugin can read in which phase, and their values.
 *
 * In on_request_headers, on_request_body, on_response_headers, on_response_body and on_log it
 * logs one line per property: "props <phase> <path> = <value>" for stable values,
 * "... size <n>" for values that vary per run (times, ids, ports), "... ip <address>" for
 * "address:port" values (the port varies), "... missing <status>" when the read fails. Path segments are separated by '.' here and by NUL for the host.
 */
#include "proxy_wasm.h"

enum { VALUE, SIZE, IP };

static const struct {
  const char *path;
  int mode;
} PROPS[] = {
    {"request.path", VALUE},
    {"request.url_path", VALUE},
    {"request.host", VALUE},
    {"request.scheme", VALUE},
    {"request.method", VALUE},
    {"request.headers.x-echo-me", VALUE},
    {"request.referer", VALUE},
    {"request.useragent", VALUE},
    {"request.protocol", VALUE},
    {"request.query", VALUE},
    {"request.time", SIZE},
    {"request.id", SIZE},
    {"request.duration", SIZE},
    {"request.size", SIZE},
    {"request.total_size", SIZE},
    {"response.code", SIZE},
    {"response.code_details", VALUE},
    {"response.flags", SIZE},
    {"response.grpc_status", SIZE},
    {"response.headers.x-upstream", VALUE},
    {"response.size", SIZE},
    {"response.total_size", SIZE},
    {"source.address", IP},
    {"source.port", SIZE},
    {"destination.address", IP},
    {"destination.port", SIZE},
    {"connection.id", SIZE},
    {"connection.mtls", SIZE},
    {"connection.requested_server_name", VALUE},
    {"upstream.address", IP},
    {"upstream.port", SIZE},
    {"xds.cluster_name", VALUE},
    {"xds.route_name", VALUE},
    {"plugin_name", VALUE},
    {"plugin_root_id", VALUE},
    {"plugin_vm_id", VALUE},
};

static void dump(const char *phase) {
  for (size_t i = 0; i < sizeof PROPS / sizeof PROPS[0]; i++) {
    char path[64] = "";
    size_t n = strlen(PROPS[i].path);
    memcpy(path, PROPS[i].path, n);
    for (size_t j = 0; j < n; j++) {
      if (path[j] == '.') path[j] = 0;
    }
    /* request.headers.x-echo-me: the header name keeps its '-' but loses no dots. */
    bytes_t value;
    uint32_t status = get_property(path, n, &value);
    char line[256] = "props ";
    sb_cat(line, sizeof line, phase, strlen(phase));
    sb_cat(line, sizeof line, " ", 1);
    sb_cat(line, sizeof line, PROPS[i].path, n);
    if (status != WASM_OK) {
      sb_cat(line, sizeof line, " missing ", 9);
      sb_u32(line, sizeof line, status);
    } else if (PROPS[i].mode == IP) {
      size_t ip = 0;
      while (ip < value.size && value.data[ip] != ':') ip++;
      sb_cat(line, sizeof line, " ip ", 4);
      sb_cat(line, sizeof line, value.data, ip);
    } else if (PROPS[i].mode == SIZE) {
      sb_cat(line, sizeof line, " size ", 6);
      sb_u32(line, sizeof line, value.size);
    } else {
      sb_cat(line, sizeof line, " = ", 3);
      sb_cat(line, sizeof line, value.data ? value.data : "", value.size);
    }
    free(value.data);
    log_msg(LOG_INFO, line);
  }
}

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  dump("request_headers");
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_request_body)
uint32_t proxy_on_request_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  if (eos) dump("request_body");
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  dump("response_headers");
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_response_body)
uint32_t proxy_on_response_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  if (eos) dump("response_body");
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_log) void proxy_on_log(uint32_t ctx) { dump("log"); }
