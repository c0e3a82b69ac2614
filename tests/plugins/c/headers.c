/*
 * headers: header add/replace/remove in both directions, request properties copied into
 * request headers, plugin configuration logged, a counter and a gauge.
 *
 * Request:  adds x-added-req, replaces x-replace-req, removes x-remove-req, and for each
 *           property in PROPS adds x-prop-<name>: <value> (or "<missing N>" with the status).
 * Response: adds x-added-resp, replaces x-replace-resp, removes x-remove-resp, and adds
 *           x-prop-response-code from the response.code property (8-byte little-endian int).
 * Metrics:  counter conformance_requests (+1 per request), gauge conformance_gauge (= 42).
 */
#include "proxy_wasm.h"

static uint32_t requests_metric, gauge_metric;

static const struct {
  const char *header;
  const char *path;
  size_t path_size;
} PROPS[] = {
    {"x-prop-path", "request\0path", 12},
    {"x-prop-url-path", "request\0url_path", 16},
    {"x-prop-method", "request\0method", 14},
    {"x-prop-host", "request\0host", 12},
    {"x-prop-scheme", "request\0scheme", 14},
    {"x-prop-protocol", "request\0protocol", 16},
    {"x-prop-query", "request\0query", 13},
    {"x-prop-useragent", "request\0useragent", 17},
    {"x-prop-header", "request\0headers\0x-echo-me", 25},
    {"x-prop-plugin-name", "plugin_name", 11},
    {"x-prop-root-id", "plugin_root_id", 14},
    {"x-prop-vm-id", "plugin_vm_id", 12},
};

EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t root, uint32_t size) {
  log_msg(LOG_INFO, "headers: vm start");
  return 1;
}

EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root, uint32_t size) {
  bytes_t config;
  get_buffer(BUFFER_PLUGIN_CONFIGURATION, 0, size, &config);
  char line[256] = "headers: configured with '";
  sb_cat(line, sizeof line, config.data ? config.data : "", config.size);
  sb_cat(line, sizeof line, "'", 1);
  log_msg(LOG_INFO, line);
  free(config.data);
  proxy_define_metric(METRIC_COUNTER, "conformance_requests", 20, &requests_metric);
  proxy_define_metric(METRIC_GAUGE, "conformance_gauge", 17, &gauge_metric);
  proxy_record_metric(gauge_metric, 42);
  return 1;
}

EXPORT(proxy_on_context_create) void proxy_on_context_create(uint32_t ctx, uint32_t parent) {}

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  add_header_str(MAP_REQUEST_HEADERS, "x-added-req", "1");
  replace_header_str(MAP_REQUEST_HEADERS, "x-replace-req", "replaced");
  remove_header(MAP_REQUEST_HEADERS, "x-remove-req");
  for (size_t i = 0; i < sizeof PROPS / sizeof PROPS[0]; i++) {
    bytes_t value;
    uint32_t status = get_property(PROPS[i].path, PROPS[i].path_size, &value);
    if (status == WASM_OK) {
      add_header(MAP_REQUEST_HEADERS, PROPS[i].header, value.data, value.size);
    } else {
      char missing[32] = "<missing ";
      sb_u32(missing, sizeof missing, status);
      sb_cat(missing, sizeof missing, ">", 1);
      add_header_str(MAP_REQUEST_HEADERS, PROPS[i].header, missing);
    }
    free(value.data);
  }
  bytes_t path;
  get_header(MAP_REQUEST_HEADERS, ":path", &path);
  char line[256] = "headers: request ";
  sb_cat(line, sizeof line, path.data ? path.data : "", path.size);
  log_msg(LOG_INFO, line);
  free(path.data);
  proxy_increment_metric(requests_metric, 1);
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  add_header_str(MAP_RESPONSE_HEADERS, "x-added-resp", "1");
  replace_header_str(MAP_RESPONSE_HEADERS, "x-replace-resp", "replaced");
  remove_header(MAP_RESPONSE_HEADERS, "x-remove-resp");
  bytes_t code;
  if (get_property("response\0code", 13, &code) == WASM_OK && code.size == 8) {
    char text[24] = "";
    sb_u32(text, sizeof text, *(uint32_t *)code.data);
    add_header_str(MAP_RESPONSE_HEADERS, "x-prop-response-code", text);
  } else {
    add_header_str(MAP_RESPONSE_HEADERS, "x-prop-response-code", "<missing>");
  }
  free(code.data);
  log_msg(LOG_WARN, "headers: response");
  return ACTION_CONTINUE;
}
