/*
 * pairs: what the plugin sees of the whole header maps, and the host's log level.
 *
 * Request:  adds x-request-header-names: the names of all request headers, in map order, as
 *           proxy_get_header_map_pairs returns them (values are left out: x-request-id is
 *           random), and x-log-level: proxy_get_log_level's answer.
 *           x-dup-seen: the value proxy_get_header_map_value gives for x-dup (sent twice);
 *           adds "X-Upper: 1" and reports in x-upper-found whether "x-upper" then reads back;
 *           x-rewrite-path: <path> replaces :path.
 * Response: adds x-response-header-names the same way for the response headers; an upstream
 *           404 becomes 200 (replacing :status) with x-was-404: 1.
 * Logs one debug line per request, which an info-level host must drop, and the VM
 * configuration at VM start.
 */
#include "proxy_wasm.h"

EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t root, uint32_t size) {
  bytes_t config;
  get_buffer(BUFFER_VM_CONFIGURATION, 0, size, &config);
  char line[128] = "pairs: vm configuration '";
  sb_cat(line, sizeof line, config.data ? config.data : "", config.size);
  sb_cat(line, sizeof line, "'", 1);
  log_msg(LOG_INFO, line);
  free(config.data);
  return 1;
}

static void add_names(uint32_t map, const char *header) {
  char *pairs = NULL;
  size_t size = 0;
  if (proxy_get_header_map_pairs(map, &pairs, &size) != WASM_OK || size < 4) {
    add_header_str(map, header, "<none>");
    return;
  }
  uint32_t n = *(uint32_t *)pairs;
  uint32_t *lengths = (uint32_t *)(pairs + 4);
  char *p = pairs + 4 + 8 * n;
  char names[1024] = "";
  for (uint32_t i = 0; i < n; i++) {
    if (i) sb_cat(names, sizeof names, ",", 1);
    sb_cat(names, sizeof names, p, lengths[2 * i]);
    p += lengths[2 * i] + 1 + lengths[2 * i + 1] + 1;
  }
  free(pairs);
  add_header_str(map, header, names);
}

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  add_names(MAP_REQUEST_HEADERS, "x-request-header-names");
  uint32_t level = 99;
  char text[12] = "";
  proxy_get_log_level(&level);
  sb_u32(text, sizeof text, level);
  add_header_str(MAP_REQUEST_HEADERS, "x-log-level", text);
  log_msg(LOG_DEBUG, "pairs: debug line");
  bytes_t value;
  if (get_header(MAP_REQUEST_HEADERS, "x-dup", &value) == WASM_OK) {
    add_header(MAP_REQUEST_HEADERS, "x-dup-seen", value.data, value.size);
    free(value.data);
  }
  proxy_add_header_map_value(MAP_REQUEST_HEADERS, "X-Upper", 7, "1", 1);
  if (get_header(MAP_REQUEST_HEADERS, "x-upper", &value) == WASM_OK) {
    add_header_str(MAP_REQUEST_HEADERS, "x-upper-found", "yes");
    free(value.data);
  } else {
    add_header_str(MAP_REQUEST_HEADERS, "x-upper-found", "no");
  }
  if (get_header(MAP_REQUEST_HEADERS, "x-rewrite-path", &value) == WASM_OK) {
    proxy_replace_header_map_value(MAP_REQUEST_HEADERS, ":path", 5, value.data, value.size);
    free(value.data);
  }
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  add_names(MAP_RESPONSE_HEADERS, "x-response-header-names");
  bytes_t status;
  if (get_header(MAP_RESPONSE_HEADERS, ":status", &status) == WASM_OK && status.size == 3 &&
      memcmp(status.data, "404", 3) == 0) {
    replace_header_str(MAP_RESPONSE_HEADERS, ":status", "200");
    add_header_str(MAP_RESPONSE_HEADERS, "x-was-404", "1");
  }
  free(status.data);
  return ACTION_CONTINUE;
}
