/*
 * local_reply: answers /deny itself with 403, headers and a body, and never reaches the
 * upstream; other requests pass. Response headers get x-local-reply-seen: 1 (also on its own
 * local reply, if the host runs the filter's response path for it), and
 * x-request-path-in-response: the request.path property as the response path sees it.
 * When the upstream answers 418 the plugin replaces that response from the response path
 * (401, x-late: yes, body "denied late\n").
 */
#include "proxy_wasm.h"

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  bytes_t path;
  get_header(MAP_REQUEST_HEADERS, ":path", &path);
  int deny = path.size >= 5 && memcmp(path.data, "/deny", 5) == 0;
  free(path.data);
  if (!deny) return ACTION_CONTINUE;
  const char *keys[] = {"x-local-reply", "content-type"};
  const char *values[] = {"yes", "text/plain"};
  size_t headers_size;
  char *headers = serialize_pairs(keys, values, 2, &headers_size);
  const char *body = "denied by plugin\n";
  log_msg(LOG_INFO, "local_reply: denying");
  proxy_send_local_response(403, "denied_by_plugin", 16, body, strlen(body), headers, headers_size,
                            -1);
  free(headers);
  return ACTION_PAUSE;
}

EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  bytes_t status;
  get_header(MAP_RESPONSE_HEADERS, ":status", &status);
  int late = status.size == 3 && memcmp(status.data, "418", 3) == 0;
  free(status.data);
  if (late) {
    log_msg(LOG_INFO, "local_reply: late deny of the upstream's 418");
    const char *keys[] = {"x-late"};
    const char *values[] = {"yes"};
    size_t headers_size;
    char *headers = serialize_pairs(keys, values, 1, &headers_size);
    proxy_send_local_response(401, "late_deny", 9, "denied late\n", 12, headers, headers_size, -1);
    free(headers);
    return ACTION_PAUSE;
  }
  add_header_str(MAP_RESPONSE_HEADERS, "x-local-reply-seen", "1");
  bytes_t path;
  uint32_t found = get_property("request\0path", 12, &path);
  if (found == WASM_OK) {
    add_header(MAP_RESPONSE_HEADERS, "x-request-path-in-response", path.data, path.size);
  } else {
    char text[32] = "<missing ";
    sb_u32(text, sizeof text, found);
    sb_cat(text, sizeof text, ">", 1);
    add_header_str(MAP_RESPONSE_HEADERS, "x-request-path-in-response", text);
  }
  free(path.data);
  return ACTION_CONTINUE;
}
