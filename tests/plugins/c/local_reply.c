/*
 * local_reply: answers /deny itself with 403, headers and a body, and never reaches the
 * upstream; other requests pass. Response headers get x-local-reply-seen: 1 (also on its own
 * local reply, if the host runs the filter's response path for it).
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
  add_header_str(MAP_RESPONSE_HEADERS, "x-local-reply-seen", "1");
  return ACTION_CONTINUE;
}
