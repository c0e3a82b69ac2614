/*
 * props2: reads the properties named in the request's query string ("/?p=a.b&p=c", dots
 * separate segments) in the phase named by "ph=" (rqh, rsh or log; default rqh) and logs
 * "<path> rc=<status> len=<size>: <value>" (bytes outside printable ASCII as \xHH). With
 * configuration "queue" the root context registers shared queue "q" in on_configure; a request
 * with "eq=1" enqueues "item" on it, and proxy_on_queue_ready logs (and traps with "trap:queue").
 */
#include "proxy_wasm.h"

IMPORT(proxy_register_shared_queue)
uint32_t proxy_register_shared_queue(const char *name, size_t size, uint32_t *token);
IMPORT(proxy_resolve_shared_queue)
uint32_t proxy_resolve_shared_queue(const char *vm, size_t vm_size, const char *name, size_t size,
                                    uint32_t *token);
IMPORT(proxy_enqueue_shared_queue)
uint32_t proxy_enqueue_shared_queue(uint32_t token, const char *data, size_t size);
IMPORT(proxy_dequeue_shared_queue)
uint32_t proxy_dequeue_shared_queue(uint32_t token, char **data, size_t *size);

static char query[1024];
static char config[256];

static void logn(const char *what, uint32_t v) {
  char line[96] = "";
  sb_cat(line, sizeof line, what, strlen(what));
  sb_cat(line, sizeof line, " ", 1);
  sb_u32(line, sizeof line, v);
  log_msg(LOG_INFO, line);
}

static void escaped(char *line, size_t cap, const char *data, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = data[i];
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      sb_cat(line, cap, (const char *)&c, 1);
    } else {
      char hex[5] = "\\x00";
      hex[2] = "0123456789abcdef"[c >> 4];
      hex[3] = "0123456789abcdef"[c & 15];
      sb_cat(line, cap, hex, 4);
    }
  }
}

static int is_phase(const char *ph) {
  const char *p = strstr(query, "ph=");
  if (!p) return strcmp(ph, "rqh") == 0;
  return strncmp(p + 3, ph, strlen(ph)) == 0;
}

static void read_props(void) {
  const char *p = query;
  while ((p = strstr(p, "p=")) != NULL) {
    if (p != query && p[-1] != '&' && p[-1] != '?') { p += 2; continue; }
    p += 2;
    char path[128];
    size_t n = strcspn(p, "&");
    if (n >= sizeof path) n = sizeof path - 1;
    memcpy(path, p, n);
    path[n] = 0;
    char raw[128];
    memcpy(raw, path, n + 1);
    for (size_t i = 0; i < n; i++) if (path[i] == '.') path[i] = 0;
    bytes_t v;
    uint32_t rc = get_property(path, n, &v);
    char line[1024] = "";
    sb_cat(line, sizeof line, raw, n);
    sb_cat(line, sizeof line, " rc=", 4);
    sb_u32(line, sizeof line, rc);
    sb_cat(line, sizeof line, " len=", 5);
    sb_u32(line, sizeof line, (uint32_t)v.size);
    sb_cat(line, sizeof line, ": ", 2);
    if (rc == WASM_OK) escaped(line, sizeof line, v.data, v.size > 200 ? 200 : v.size);
    free(v.data);
    log_msg(LOG_INFO, line);
  }
}

EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t ctx, uint32_t size) {
  bytes_t c;
  if (size && get_buffer(BUFFER_PLUGIN_CONFIGURATION, 0, size, &c) == WASM_OK) {
    size_t n = c.size < sizeof config - 1 ? c.size : sizeof config - 1;
    memcpy(config, c.data, n);
    config[n] = 0;
    free(c.data);
  }
  if (strstr(config, "queue")) {
    uint32_t token = 0;
    logn("register", proxy_register_shared_queue("q", 1, &token));
    logn("queue token", token);
  }
  return 1;
}

EXPORT(proxy_on_queue_ready) void proxy_on_queue_ready(uint32_t ctx, uint32_t token) {
  logn("queue ready", token);
  char *data = NULL;
  size_t size = 0;
  logn("dequeue", proxy_dequeue_shared_queue(token, &data, &size));
  logn("dequeued", (uint32_t)size);
  if (strstr(config, "trap:queue")) __builtin_trap();
}

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  bytes_t path;
  query[0] = 0;
  if (get_header(MAP_REQUEST_HEADERS, ":path", &path) == WASM_OK) {
    size_t k = path.size < sizeof query - 1 ? path.size : sizeof query - 1;
    memcpy(query, path.data, k);
    query[k] = 0;
    free(path.data);
  }
  if (strstr(query, "eq=1")) {
    uint32_t token = 0;
    logn("resolve", proxy_resolve_shared_queue("golden", 6, "q", 1, &token));
    logn("enqueue", proxy_enqueue_shared_queue(token, "item", 4));
  }
  if (is_phase("rqh")) read_props();
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  if (is_phase("rsh")) read_props();
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_log) void proxy_on_log(uint32_t ctx) {
  if (is_phase("log")) read_props();
}
