/*
 * A tiny Proxy-Wasm ABI v0.2.1 binding for the conformance test plugins.
 *
 * Host imports live in module "env"; status codes, map/buffer/stream types and the map
 * serialization follow proxy-wasm/spec abi-versions/v0.2.1. Build with
 *   clang --target=wasm32-wasi -mexec-model=reactor -O2 -o x.wasm x.c
 */
#ifndef PROXY_WASM_H
#define PROXY_WASM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define IMPORT(name) __attribute__((import_module("env"), import_name(#name)))
#define EXPORT(name) __attribute__((export_name(#name)))

/* Status. */
enum { WASM_OK = 0, WASM_NOT_FOUND = 1, WASM_BAD_ARGUMENT = 2 };
/* Actions. */
enum { ACTION_CONTINUE = 0, ACTION_PAUSE = 1 };
/* Log levels. */
enum { LOG_TRACE = 0, LOG_DEBUG = 1, LOG_INFO = 2, LOG_WARN = 3, LOG_ERROR = 4, LOG_CRITICAL = 5 };
/* Maps. */
enum {
  MAP_REQUEST_HEADERS = 0, MAP_REQUEST_TRAILERS = 1, MAP_RESPONSE_HEADERS = 2,
  MAP_RESPONSE_TRAILERS = 3, MAP_HTTP_CALL_RESPONSE_HEADERS = 6
};
/* Buffers. */
enum {
  BUFFER_REQUEST_BODY = 0, BUFFER_RESPONSE_BODY = 1, BUFFER_DOWNSTREAM_DATA = 2,
  BUFFER_UPSTREAM_DATA = 3, BUFFER_HTTP_CALL_RESPONSE_BODY = 4, BUFFER_VM_CONFIGURATION = 6,
  BUFFER_PLUGIN_CONFIGURATION = 7
};
/* Streams. */
enum { STREAM_REQUEST = 0, STREAM_RESPONSE = 1, STREAM_DOWNSTREAM = 2, STREAM_UPSTREAM = 3 };
/* Metrics. */
enum { METRIC_COUNTER = 0, METRIC_GAUGE = 1, METRIC_HISTOGRAM = 2 };

IMPORT(proxy_log) uint32_t proxy_log(uint32_t level, const char *msg, size_t size);
IMPORT(proxy_get_log_level) uint32_t proxy_get_log_level(uint32_t *level);
IMPORT(proxy_get_header_map_value)
uint32_t proxy_get_header_map_value(uint32_t map, const char *key, size_t key_size,
                                    char **value, size_t *value_size);
IMPORT(proxy_add_header_map_value)
uint32_t proxy_add_header_map_value(uint32_t map, const char *key, size_t key_size,
                                    const char *value, size_t value_size);
IMPORT(proxy_replace_header_map_value)
uint32_t proxy_replace_header_map_value(uint32_t map, const char *key, size_t key_size,
                                        const char *value, size_t value_size);
IMPORT(proxy_remove_header_map_value)
uint32_t proxy_remove_header_map_value(uint32_t map, const char *key, size_t key_size);
IMPORT(proxy_get_header_map_pairs)
uint32_t proxy_get_header_map_pairs(uint32_t map, char **pairs, size_t *pairs_size);
IMPORT(proxy_get_buffer_bytes)
uint32_t proxy_get_buffer_bytes(uint32_t buffer, size_t start, size_t max_size, char **data,
                                size_t *data_size);
IMPORT(proxy_set_buffer_bytes)
uint32_t proxy_set_buffer_bytes(uint32_t buffer, size_t start, size_t size, const char *data,
                                size_t data_size);
IMPORT(proxy_send_local_response)
uint32_t proxy_send_local_response(uint32_t status, const char *details, size_t details_size,
                                   const char *body, size_t body_size, const char *headers,
                                   size_t headers_size, int32_t grpc_status);
IMPORT(proxy_http_call)
uint32_t proxy_http_call(const char *upstream, size_t upstream_size, const char *headers,
                         size_t headers_size, const char *body, size_t body_size,
                         const char *trailers, size_t trailers_size, uint32_t timeout_ms,
                         uint32_t *token);
IMPORT(proxy_continue_stream) uint32_t proxy_continue_stream(uint32_t stream);
IMPORT(proxy_set_effective_context) uint32_t proxy_set_effective_context(uint32_t context_id);
IMPORT(proxy_define_metric)
uint32_t proxy_define_metric(uint32_t type, const char *name, size_t name_size, uint32_t *id);
IMPORT(proxy_increment_metric) uint32_t proxy_increment_metric(uint32_t id, int64_t offset);
IMPORT(proxy_record_metric) uint32_t proxy_record_metric(uint32_t id, uint64_t value);
IMPORT(proxy_get_metric) uint32_t proxy_get_metric(uint32_t id, uint64_t *value);
IMPORT(proxy_get_shared_data)
uint32_t proxy_get_shared_data(const char *key, size_t key_size, char **value, size_t *value_size,
                               uint32_t *cas);
IMPORT(proxy_set_shared_data)
uint32_t proxy_set_shared_data(const char *key, size_t key_size, const char *value,
                               size_t value_size, uint32_t cas);
IMPORT(proxy_get_property)
uint32_t proxy_get_property(const char *path, size_t path_size, char **value, size_t *value_size);

/* The allocator the host uses for r_ptr/r_size results. */
EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) {
  return malloc(size);
}
EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

/* A host-allocated byte string (NUL-terminated copy for convenience). */
typedef struct {
  char *data;
  size_t size;
} bytes_t;

static inline void log_msg(uint32_t level, const char *msg) { proxy_log(level, msg, strlen(msg)); }

static inline uint32_t get_header(uint32_t map, const char *key, bytes_t *out) {
  out->data = NULL;
  out->size = 0;
  return proxy_get_header_map_value(map, key, strlen(key), &out->data, &out->size);
}

static inline uint32_t add_header(uint32_t map, const char *key, const char *value, size_t n) {
  return proxy_add_header_map_value(map, key, strlen(key), value, n);
}

static inline uint32_t add_header_str(uint32_t map, const char *key, const char *value) {
  return add_header(map, key, value, strlen(value));
}

static inline uint32_t replace_header_str(uint32_t map, const char *key, const char *value) {
  return proxy_replace_header_map_value(map, key, strlen(key), value, strlen(value));
}

static inline uint32_t remove_header(uint32_t map, const char *key) {
  return proxy_remove_header_map_value(map, key, strlen(key));
}

static inline uint32_t get_buffer(uint32_t buffer, size_t start, size_t max, bytes_t *out) {
  out->data = NULL;
  out->size = 0;
  return proxy_get_buffer_bytes(buffer, start, max, &out->data, &out->size);
}

/* Property path from NUL-separated segments: get_property("request\0path", 12, &out). */
static inline uint32_t get_property(const char *path, size_t path_size, bytes_t *out) {
  out->data = NULL;
  out->size = 0;
  return proxy_get_property(path, path_size, &out->data, &out->size);
}

/* Serialize n header pairs (keys[i], values[i]) into a newly allocated map buffer. */
static inline char *serialize_pairs(const char **keys, const char **values, uint32_t n,
                                    size_t *size) {
  size_t total = 4 + 8 * n;
  for (uint32_t i = 0; i < n; i++) total += strlen(keys[i]) + strlen(values[i]) + 2;
  char *buf = malloc(total);
  uint32_t *head = (uint32_t *)buf;
  head[0] = n;
  char *p = buf + 4 + 8 * n;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t k = strlen(keys[i]), v = strlen(values[i]);
    head[1 + 2 * i] = k;
    head[2 + 2 * i] = v;
    memcpy(p, keys[i], k + 1);
    p += k + 1;
    memcpy(p, values[i], v + 1);
    p += v + 1;
  }
  *size = total;
  return buf;
}

/* A small string builder for log lines. */
static inline void sb_cat(char *dst, size_t cap, const char *src, size_t n) {
  size_t len = strlen(dst);
  if (len + n >= cap) n = cap - len - 1;
  memcpy(dst + len, src, n);
  dst[len + n] = 0;
}

static inline void sb_u32(char *dst, size_t cap, uint32_t v) {
  char tmp[12];
  int i = 11;
  tmp[i] = 0;
  do {
    tmp[--i] = '0' + v % 10;
    v /= 10;
  } while (v);
  sb_cat(dst, cap, tmp + i, strlen(tmp + i));
}

#endif
