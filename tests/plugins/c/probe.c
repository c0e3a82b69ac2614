/*
 * probe: a scratch/golden differential plugin driven by its configuration and the request's
 * query string. Every callback logs "cb <name> <args>" at info.
 *
 * Configuration (substrings): "trap:<cb>" traps in <cb> (vm_start, configure, create,
 * tick, request_headers, ...), "loop:<cb>" never returns from <cb>, "tick" sets a 200 ms tick
 * period in on_configure, "props:configure" logs the properties in on_configure.
 *
 * Query keys (each "k=v", up to the next '&'):
 *   tr=<cb>   trap in <cb> for this stream (rqh rqb rsh rsb log done delete cr)
 *   lp=<cb>   loop forever in <cb> for this stream (same names)
 *   lr=<ph>   local reply in phase rqh/rqb/rsh/rsb/cr with st=<status>, bd=<body>,
 *             hs=<header set 0..7>, gs=<grpc status>
 *   pp=<ph>   log the properties in phase rqh/rqb/rsh/rsb/log/cr
 *   ah=1      header ops in both directions (add, replace, remove, duplicates, upper case)
 *   ah=2      rewrites Envoy treats specially (:path, :authority, x-request-id; response
 *             :status, content-length removed, server, date, connection, keep-alive)
 *   co=1      an HTTP callout to cluster "callout" from the request headers (pause, resume)
 *   op=1      shared data, a shared queue, metrics (define, increment, record, get)
 *   mo=<ph>   more host calls in phase rqh/rqb/rsh/log: log level, set/get property, pairs,
 *             buffer, time, a map that does not exist, continue_stream(downstream), and one
 *             log line per level
 *   tk=<kind> the kind of trap for tr=: oob, div, ovf, stack, null, abort (default unreachable)
 *   pv=1      also the volatile properties with pp=
 */
#include "proxy_wasm.h"

IMPORT(proxy_set_tick_period_milliseconds) uint32_t proxy_set_tick_period_milliseconds(uint32_t);
IMPORT(proxy_register_shared_queue)
uint32_t proxy_register_shared_queue(const char *name, size_t size, uint32_t *token);
IMPORT(proxy_enqueue_shared_queue)
uint32_t proxy_enqueue_shared_queue(uint32_t token, const char *data, size_t size);
IMPORT(proxy_dequeue_shared_queue)
uint32_t proxy_dequeue_shared_queue(uint32_t token, char **data, size_t *size);

static char config[512];
static char query[512];
static int ticks;

static const char *arg(const char *key) {
  static char out[128];
  size_t k = strlen(key);
  const char *p = query;
  while ((p = strstr(p, key)) != NULL) {
    if ((p == query || p[-1] == '&' || p[-1] == '?') && p[k] == '=') {
      const char *v = p + k + 1;
      size_t n = strcspn(v, "&");
      if (n >= sizeof out) n = sizeof out - 1;
      memcpy(out, v, n);
      out[n] = 0;
      return out;
    }
    p += k;
  }
  return NULL;
}

static int is(const char *key, const char *value) {
  const char *v = arg(key);
  return v != NULL && strcmp(v, value) == 0;
}

static int conf(const char *what, const char *cb) {
  char needle[64] = "";
  sb_cat(needle, sizeof needle, what, strlen(what));
  sb_cat(needle, sizeof needle, ":", 1);
  sb_cat(needle, sizeof needle, cb, strlen(cb));
  return strstr(config, needle) != NULL;
}

static void say(const char *name, uint32_t a, uint32_t b, int two) {
  char line[128] = "cb ";
  sb_cat(line, sizeof line, name, strlen(name));
  sb_cat(line, sizeof line, " ", 1);
  sb_u32(line, sizeof line, a);
  if (two) {
    sb_cat(line, sizeof line, " ", 1);
    sb_u32(line, sizeof line, b);
  }
  log_msg(LOG_INFO, line);
}

IMPORT(proxy_set_property)
uint32_t proxy_set_property(const char *path, size_t path_size, const char *value, size_t size);
IMPORT(proxy_get_current_time_nanoseconds) uint32_t proxy_get_current_time_nanoseconds(uint64_t *);

typedef int (*fn_t)(int);
static int one(int x) { return x + 1; }
static volatile fn_t table_fns[2] = {one, 0};
static volatile int zero = 0;

__attribute__((noinline)) static int deep(int n) {
  volatile char pad[256];
  pad[n & 255] = (char)n;
  return deep(n + 1) + pad[(n + 1) & 255];
}

/* A trap of the kind named by the query's "tk" (default: unreachable). */
__attribute__((noinline)) static void trap_kind(void) {
  const char *kind = arg("tk");
  if (kind && strcmp(kind, "oob") == 0) {
    volatile uint32_t *p = (uint32_t *)0xfffffff0u;
    *p = 1;
  } else if (kind && strcmp(kind, "div") == 0) {
    log_msg(LOG_INFO, 10 / zero ? "x" : "y");
  } else if (kind && strcmp(kind, "ovf") == 0) {
    volatile int m = -2147483647 - 1, d = -1 + zero;
    log_msg(LOG_INFO, m / d ? "x" : "y");
  } else if (kind && strcmp(kind, "stack") == 0) {
    log_msg(LOG_INFO, deep(zero) ? "x" : "y");
  } else if (kind && strcmp(kind, "null") == 0) {
    log_msg(LOG_INFO, table_fns[1 + zero](1) ? "x" : "y");
  } else if (kind && strcmp(kind, "abort") == 0) {
    abort();
  }
  __builtin_trap();
}

__attribute__((noinline)) static void spin(void) {
  volatile uint32_t x = 0;
  for (;;) x++;
}

/* Trap or loop as configured for callback <cb> (config) or stream phase <ph> (query). */
static void act(const char *cb, const char *ph) {
  if (conf("trap", cb) || (ph && is("tr", ph))) trap_kind();
  if (conf("loop", cb) || (ph && is("lp", ph))) spin();
}

static const char *PROPS[] = {
    "request\0path", "request\0url_path", "request\0host", "request\0scheme",
    "request\0method", "request\0referer", "request\0useragent", "request\0id",
    "request\0protocol", "request\0query", "request\0size", "request\0total_size",
    "request\0headers", "request\0trailers", "response\0code", "response\0code_details",
    "response\0flags", "response\0grpc_status", "response\0headers", "response\0trailers",
    "response\0size", "connection\0mtls",
    "connection\0requested_server_name", "connection\0tls_version", "connection\0termination_details",
    "destination\0address", "source\0address", "upstream\0address",
    "upstream\0transport_failure_reason", "plugin_name", "plugin_root_id", "plugin_vm_id",
    "cluster_name", "route_name", "listener_direction", "xds\0cluster_name", "xds\0route_name",
    "node\0id", "node\0cluster", NULL};
/* Also logged, but only for "pp=<ph>&pv=1": values that change run to run or that Envoy
 * serializes in a random order (xds.node), or that count x-envoy-upstream-service-time's
 * digits (response.total_size). */
static const char *VOLATILE[] = {"xds\0node", "request\0duration", "response\0total_size",
                                 "request\0time", "connection\0id", NULL};

static size_t path_len(const char *p) {
  const char *second = p + strlen(p) + 1;
  if (strchr(p, 0) && (strcmp(p, "request") == 0 || strcmp(p, "response") == 0 ||
                       strcmp(p, "connection") == 0 || strcmp(p, "destination") == 0 ||
                       strcmp(p, "source") == 0 || strcmp(p, "upstream") == 0 ||
                       strcmp(p, "xds") == 0 || strcmp(p, "node") == 0) &&
      *second)
    return strlen(p) + 1 + strlen(second);
  return strlen(p);
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

static void dump_list(const char *ph, const char **list);

static void dump_props(const char *ph) {
  dump_list(ph, PROPS);
  if (is("pv", "1")) dump_list(ph, VOLATILE);
}

static void dump_list(const char *ph, const char **list) {
  for (int i = 0; list[i]; i++) {
    const char *p = list[i];
    size_t n = path_len(p);
    bytes_t v;
    uint32_t rc = get_property(p, n, &v);
    char line[2048] = "prop ";
    char name[64];
    memcpy(name, p, n);
    for (size_t j = 0; j < n; j++)
      if (!name[j]) name[j] = '.';
    name[n] = 0;
    sb_cat(line, sizeof line, ph, strlen(ph));
    sb_cat(line, sizeof line, " ", 1);
    sb_cat(line, sizeof line, name, n);
    sb_cat(line, sizeof line, " rc=", 4);
    sb_u32(line, sizeof line, rc);
    sb_cat(line, sizeof line, ": ", 2);
    size_t len = strlen(name);
    int map = len > 8 && (strcmp(name + len - 8, ".headers") == 0 ||
                          strcmp(name + len - 9, ".trailers") == 0);
    if (rc == WASM_OK && map && v.size >= 4) {
      uint32_t count = *(uint32_t *)v.data;
      const char *q = v.data + 4 + 8 * count;
      for (uint32_t k = 0; k < count; k++) {
        uint32_t kl = ((uint32_t *)v.data)[1 + 2 * k], vl = ((uint32_t *)v.data)[2 + 2 * k];
        escaped(line, sizeof line, q, kl);
        sb_cat(line, sizeof line, "=", 1);
        q += kl + 1;
        escaped(line, sizeof line, q, vl);
        sb_cat(line, sizeof line, "|", 1);
        q += vl + 1;
      }
    } else if (rc == WASM_OK) {
      escaped(line, sizeof line, v.data, v.size);
    }
    free(v.data);
    log_msg(LOG_INFO, line);
  }
}

static void header_set(int set, const char ***keys, const char ***values, uint32_t *n) {
  static const char *k0[] = {"x-plugin"}, *v0[] = {"a"};
  static const char *k1[] = {"content-type", "x-plugin"}, *v1[] = {"application/json", "a"};
  static const char *k2[] = {"content-length", "server", "date", "x-plugin"},
                    *v2[] = {"7", "probe", "yesterday", "a"};
  static const char *k3[] = {"x-d", "x-plugin", "x-d"}, *v3[] = {"1", "a", "2"};
  static const char *k4[] = {"X-Up", "x-plugin"}, *v4[] = {"V", "a"};
  static const char *k5[] = {":status", "x-plugin"}, *v5[] = {"299", "a"};
  static const char *k6[] = {"content-type", "grpc-message"}, *v6[] = {"application/grpc", "m"};
  static const char *k7[] = {"location", "cache-control", "connection"},
                    *v7[] = {"/x", "no-store", "close"};
  static const char **ks[] = {k0, k1, k2, k3, k4, k5, k6, k7}, **vs[] = {v0, v1, v2, v3, v4, v5, v6, v7};
  static const uint32_t ns[] = {1, 2, 4, 3, 2, 2, 2, 3};
  if (set < 0 || set > 7) {
    *n = 0;
    return;
  }
  *keys = ks[set];
  *values = vs[set];
  *n = ns[set];
}

static int atoi_(const char *s, int dflt) {
  if (!s || !*s) return dflt;
  int neg = *s == '-', v = 0;
  if (neg) s++;
  while (*s >= '0' && *s <= '9') v = v * 10 + (*s++ - '0');
  return neg ? -v : v;
}

/* A local reply if asked for in phase <ph>: returns 1 when sent. */
static int local(const char *ph) {
  if (!is("lr", ph)) return 0;
  int status = atoi_(arg("st"), 403);
  const char *body = arg("bd");
  char text[128] = "";
  if (body) sb_cat(text, sizeof text, body, strlen(body));
  const char **keys = NULL, **values = NULL;
  uint32_t n = 0;
  header_set(atoi_(arg("hs"), -1), &keys, &values, &n);
  size_t size = 0;
  char *headers = n ? serialize_pairs(keys, values, n, &size) : NULL;
  uint32_t rc = proxy_send_local_response(status, "probe", 5, text, strlen(text),
                                          headers ? headers : "", size, atoi_(arg("gs"), -1));
  free(headers);
  char line[64] = "local rc=";
  sb_u32(line, sizeof line, rc);
  log_msg(LOG_INFO, line);
  return 1;
}

static void ops(void) {
  uint32_t id = 0, q = 0, rc;
  char line[256] = "ops";
  rc = proxy_define_metric(METRIC_COUNTER, "probe_c", 7, &id);
  sb_cat(line, sizeof line, " def=", 5);
  sb_u32(line, sizeof line, rc);
  rc = proxy_increment_metric(id, 3);
  sb_cat(line, sizeof line, " inc=", 5);
  sb_u32(line, sizeof line, rc);
  uint64_t value = 0;
  rc = proxy_get_metric(id, &value);
  sb_cat(line, sizeof line, " get=", 5);
  sb_u32(line, sizeof line, rc);
  sb_cat(line, sizeof line, "/", 1);
  sb_u32(line, sizeof line, (uint32_t)value);
  rc = proxy_set_shared_data("probe-k", 7, "v1", 2, 0);
  sb_cat(line, sizeof line, " set=", 5);
  sb_u32(line, sizeof line, rc);
  bytes_t got = {0, 0};
  uint32_t cas = 0;
  rc = proxy_get_shared_data("probe-k", 7, &got.data, &got.size, &cas);
  sb_cat(line, sizeof line, " sget=", 6);
  sb_u32(line, sizeof line, rc);
  free(got.data);
  rc = proxy_register_shared_queue("probe-q", 7, &q);
  sb_cat(line, sizeof line, " reg=", 5);
  sb_u32(line, sizeof line, rc);
  rc = proxy_enqueue_shared_queue(q, "item", 4);
  sb_cat(line, sizeof line, " enq=", 5);
  sb_u32(line, sizeof line, rc);
  got.data = NULL;
  rc = proxy_dequeue_shared_queue(q, &got.data, &got.size);
  sb_cat(line, sizeof line, " deq=", 5);
  sb_u32(line, sizeof line, rc);
  free(got.data);
  rc = proxy_get_shared_data("absent", 6, &got.data, &got.size, &cas);
  sb_cat(line, sizeof line, " miss=", 6);
  sb_u32(line, sizeof line, rc);
  log_msg(LOG_INFO, line);
}

static void more_ops(void) {
  uint32_t level = 99, rc;
  char line[256] = "more";
  rc = proxy_get_log_level(&level);
  sb_cat(line, sizeof line, " lvl=", 5);
  sb_u32(line, sizeof line, rc);
  sb_cat(line, sizeof line, "/", 1);
  sb_u32(line, sizeof line, level);
  rc = proxy_set_property("filter_state_x", 14, "val", 3);
  sb_cat(line, sizeof line, " setp=", 6);
  sb_u32(line, sizeof line, rc);
  bytes_t got;
  rc = get_property("filter_state_x", 14, &got);
  sb_cat(line, sizeof line, " getp=", 6);
  sb_u32(line, sizeof line, rc);
  free(got.data);
  char *pairs = NULL;
  size_t psize = 0;
  rc = proxy_get_header_map_pairs(MAP_REQUEST_HEADERS, &pairs, &psize);
  sb_cat(line, sizeof line, " pairs=", 7);
  sb_u32(line, sizeof line, rc);
  free(pairs);
  rc = proxy_get_header_map_pairs(MAP_RESPONSE_HEADERS, &pairs, &psize);
  sb_cat(line, sizeof line, " rpairs=", 8);
  sb_u32(line, sizeof line, rc);
  sb_cat(line, sizeof line, "/", 1);
  sb_u32(line, sizeof line, (uint32_t)psize);
  free(pairs);
  rc = get_buffer(BUFFER_REQUEST_BODY, 0, 10, &got);
  sb_cat(line, sizeof line, " buf=", 5);
  sb_u32(line, sizeof line, rc);
  free(got.data);
  uint64_t now = 0;
  rc = proxy_get_current_time_nanoseconds(&now);
  sb_cat(line, sizeof line, " time=", 6);
  sb_u32(line, sizeof line, rc);
  rc = replace_header_str(MAP_HTTP_CALL_RESPONSE_HEADERS, "x", "y");
  sb_cat(line, sizeof line, " crh=", 5);
  sb_u32(line, sizeof line, rc);
  rc = proxy_continue_stream(STREAM_DOWNSTREAM);
  sb_cat(line, sizeof line, " cont=", 6);
  sb_u32(line, sizeof line, rc);
  for (uint32_t l = LOG_TRACE; l <= LOG_CRITICAL; l++) {
    char text[16] = "level ";
    sb_u32(text, sizeof text, l);
    proxy_log(l, text, strlen(text));
  }
  log_msg(LOG_INFO, line);
}

static void headers_ops2(uint32_t map) {
  if (map == MAP_REQUEST_HEADERS) {
    replace_header_str(map, ":path", "/rewritten?pp=log");
    replace_header_str(map, ":authority", "other.test");
    remove_header(map, "x-request-id");
    add_header_str(map, "x-forwarded-for", "10.0.0.1");
  } else {
    remove_header(map, "content-length");
    replace_header_str(map, ":status", "201");
    add_header_str(map, "server", "plugin");
    add_header_str(map, "date", "plugin-date");
    add_header_str(map, "connection", "keep-alive");
    add_header_str(map, "keep-alive", "timeout=5");
  }
}

static void headers_ops(uint32_t map) {
  if (is("ah", "2")) headers_ops2(map);
  if (!is("ah", "1")) return;
  if (map == MAP_REQUEST_HEADERS) {
    add_header_str(map, "x-req-add", "1");
    add_header_str(map, "x-a", "again");
    replace_header_str(map, "x-b", "replaced");
    remove_header(map, "accept");
    add_header_str(map, "X-Upper", "Case");
  } else {
    add_header_str(map, "x-resp-add", "1");
    add_header_str(map, "x-resp-add", "2");
    replace_header_str(map, "x-replace-resp", "new");
    remove_header(map, "x-remove-resp");
    add_header_str(map, "X-Resp-Upper", "Case");
    replace_header_str(map, "content-type", "text/probe");
  }
}

EXPORT(proxy_on_context_create) void proxy_on_context_create(uint32_t ctx, uint32_t root) {
  say("create", ctx, root, 1);
  if (root) act("create", NULL);
}

EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t ctx, uint32_t size) {
  say("vm_start", ctx, size, 1);
  act("vm_start", NULL);
  return 1;
}

EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t ctx, uint32_t size) {
  say("configure", ctx, size, 1);
  bytes_t c;
  if (size && get_buffer(BUFFER_PLUGIN_CONFIGURATION, 0, size, &c) == WASM_OK) {
    size_t n = c.size < sizeof config - 1 ? c.size : sizeof config - 1;
    memcpy(config, c.data, n);
    config[n] = 0;
    free(c.data);
  }
  act("configure", NULL);
  if (strstr(config, "props:configure")) dump_props("configure");
  if (strstr(config, "tick")) proxy_set_tick_period_milliseconds(200);
  if (strstr(config, "ops:configure")) ops();
  return strstr(config, "refuse") ? 0 : 1;
}

EXPORT(proxy_on_tick) void proxy_on_tick(uint32_t ctx) {
  if (ticks++ < 2) say("tick", ctx, 0, 0);
  act("tick", NULL);
}

static uint32_t token_of = 0;

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  say("request_headers", n, eos, 1);
  query[0] = 0;
  bytes_t path;
  if (get_header(MAP_REQUEST_HEADERS, ":path", &path) == WASM_OK) {
    size_t k = path.size < sizeof query - 1 ? path.size : sizeof query - 1;
    memcpy(query, path.data, k);
    query[k] = 0;
    free(path.data);
  }
  act("request_headers", "rqh");
  if (is("pp", "rqh")) dump_props("rqh");
  if (is("op", "1")) ops();
  if (is("mo", "rqh")) more_ops();
  headers_ops(MAP_REQUEST_HEADERS);
  if (local("rqh")) return ACTION_PAUSE;
  if (is("co", "1")) {
    const char *keys[] = {":method", ":path", ":authority"};
    const char *values[] = {"GET", "/from-callout", "callout.test"};
    size_t size;
    char *headers = serialize_pairs(keys, values, 3, &size);
    uint32_t rc = proxy_http_call("callout", 7, headers, size, "", 0, NULL, 0, 5000, &token_of);
    free(headers);
    char line[64] = "callout rc=";
    sb_u32(line, sizeof line, rc);
    log_msg(LOG_INFO, line);
    if (rc == WASM_OK) return ACTION_PAUSE;
  }
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_request_body)
uint32_t proxy_on_request_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  say("request_body", size, eos, 1);
  act("request_body", "rqb");
  if (is("mo", "rqb")) more_ops();
  if (eos && is("pp", "rqb")) dump_props("rqb");
  if (eos && local("rqb")) return ACTION_PAUSE;
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  say("response_headers", n, eos, 1);
  add_header_str(MAP_RESPONSE_HEADERS, "x-later", "1");
  act("response_headers", "rsh");
  if (is("mo", "rsh")) more_ops();
  if (is("pp", "rsh")) dump_props("rsh");
  headers_ops(MAP_RESPONSE_HEADERS);
  if (local("rsh")) return ACTION_PAUSE;
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_response_body)
uint32_t proxy_on_response_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  say("response_body", size, eos, 1);
  if (eos) act("response_body", "rsb");
  if (eos && is("pp", "rsb")) dump_props("rsb");
  if (eos && local("rsb")) return ACTION_PAUSE;
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_http_call_response)
void proxy_on_http_call_response(uint32_t ctx, uint32_t token, uint32_t headers, uint32_t size,
                                 uint32_t trailers) {
  say("http_call_response", headers, size, 1);
  act("http_call_response", "cr");
  if (is("pp", "cr")) dump_props("cr");
  if (local("cr")) return;
  proxy_continue_stream(STREAM_REQUEST);
}

EXPORT(proxy_on_log) void proxy_on_log(uint32_t ctx) {
  say("log", ctx, 0, 0);
  act("log", "log");
  if (is("mo", "log")) more_ops();
  if (is("pp", "log")) dump_props("log");
}

EXPORT(proxy_on_done) uint32_t proxy_on_done(uint32_t ctx) {
  say("done", ctx, 0, 0);
  act("done", "done");
  return 1;
}

EXPORT(proxy_on_delete) void proxy_on_delete(uint32_t ctx) {
  say("delete", ctx, 0, 0);
  act("delete", "delete");
}
