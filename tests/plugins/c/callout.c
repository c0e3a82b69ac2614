/*
 * callout: requests with x-callout: <path> pause, call the "callout" cluster
 * (GET <path>, authority callout.test; x-callout-cluster and x-callout-timeout (ms) override the
 * cluster and the 5000 ms timeout), and on the answer add x-callout-status, x-callout-header
 * (its x-callout header) and x-callout-body to the request before resuming it. A failed or
 * timed-out call (no headers) resumes with x-callout-status: none; a call the host refuses adds
 * x-callout-error: <status> and continues at once.
 * Requests with x-callout-response: <path> make the same call from the response path instead:
 * the upstream's response waits (headers and body) until the answer adds x-callout-status to it.
 */
#include "proxy_wasm.h"

#define MAX_CALLS 64
static struct {
  uint32_t token, context, stream;
} calls[MAX_CALLS];

/* Streams whose response makes a callout: context id -> path. */
static struct {
  uint32_t context;
  char path[64];
} later[MAX_CALLS];

static uint32_t dispatch(uint32_t ctx, uint32_t stream, const char *path, const char *cluster,
                         uint32_t timeout, uint32_t map) {
  const char *keys[] = {":method", ":path", ":authority", "x-from-plugin"};
  const char *values[] = {"GET", path, "callout.test", "callout"};
  size_t headers_size;
  char *headers = serialize_pairs(keys, values, 4, &headers_size);
  uint32_t token = 0;
  uint32_t status = proxy_http_call(cluster, strlen(cluster), headers, headers_size, "", 0, NULL,
                                    0, timeout, &token);
  free(headers);
  if (status != WASM_OK) {
    char text[12] = "";
    sb_u32(text, sizeof text, status);
    add_header_str(map, "x-callout-error", text);
    char line[64] = "callout: http_call failed with status ";
    sb_cat(line, sizeof line, text, strlen(text));
    log_msg(LOG_ERROR, line);
    return ACTION_CONTINUE;
  }
  for (int i = 0; i < MAX_CALLS; i++) {
    if (calls[i].context == 0) {
      calls[i].token = token;
      calls[i].context = ctx;
      calls[i].stream = stream;
      break;
    }
  }
  log_msg(LOG_INFO, stream == STREAM_REQUEST ? "callout: dispatched"
                                             : "callout: dispatched from the response");
  return ACTION_PAUSE;
}

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  bytes_t target;
  if (get_header(MAP_REQUEST_HEADERS, "x-callout-response", &target) == WASM_OK) {
    for (int i = 0; i < MAX_CALLS; i++) {
      if (later[i].context == 0) {
        later[i].context = ctx;
        later[i].path[0] = 0;
        sb_cat(later[i].path, sizeof later[i].path, target.data, target.size);
        break;
      }
    }
    free(target.data);
    return ACTION_CONTINUE;
  }
  if (get_header(MAP_REQUEST_HEADERS, "x-callout", &target) != WASM_OK) return ACTION_CONTINUE;
  char path[128] = "";
  sb_cat(path, sizeof path, target.data, target.size);
  free(target.data);
  char cluster[64] = "callout";
  bytes_t value;
  if (get_header(MAP_REQUEST_HEADERS, "x-callout-cluster", &value) == WASM_OK) {
    cluster[0] = 0;
    sb_cat(cluster, sizeof cluster, value.data, value.size);
    free(value.data);
  }
  uint32_t timeout = 5000;
  if (get_header(MAP_REQUEST_HEADERS, "x-callout-timeout", &value) == WASM_OK) {
    timeout = 0;
    for (size_t i = 0; i < value.size; i++) timeout = timeout * 10 + (value.data[i] - '0');
    free(value.data);
  }
  return dispatch(ctx, STREAM_REQUEST, path, cluster, timeout, MAP_REQUEST_HEADERS);
}

EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  for (int i = 0; i < MAX_CALLS; i++) {
    if (later[i].context == ctx) {
      later[i].context = 0;
      return dispatch(ctx, STREAM_RESPONSE, later[i].path, "callout", 5000, MAP_RESPONSE_HEADERS);
    }
  }
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_http_call_response)
void proxy_on_http_call_response(uint32_t ctx, uint32_t token, uint32_t nheaders,
                                 uint32_t body_size, uint32_t ntrailers) {
  uint32_t stream = 0, direction = STREAM_REQUEST;
  for (int i = 0; i < MAX_CALLS; i++) {
    if (calls[i].context != 0 && calls[i].token == token) {
      stream = calls[i].context;
      direction = calls[i].stream;
      calls[i].context = 0;
      break;
    }
  }
  if (stream == 0) {
    log_msg(LOG_ERROR, "callout: unknown token");
    return;
  }
  bytes_t status, header, body;
  uint32_t got_status = get_header(MAP_HTTP_CALL_RESPONSE_HEADERS, ":status", &status);
  get_header(MAP_HTTP_CALL_RESPONSE_HEADERS, "x-callout", &header);
  get_buffer(BUFFER_HTTP_CALL_RESPONSE_BODY, 0, body_size, &body);
  proxy_set_effective_context(stream);
  uint32_t map = direction == STREAM_REQUEST ? MAP_REQUEST_HEADERS : MAP_RESPONSE_HEADERS;
  if (got_status == WASM_OK) {
    add_header(map, "x-callout-status", status.data, status.size);
  } else {
    add_header_str(map, "x-callout-status", "none");
  }
  if (header.data) add_header(map, "x-callout-header", header.data, header.size);
  add_header(map, "x-callout-body", body.data ? body.data : "", body.size);
  free(status.data);
  free(header.data);
  free(body.data);
  log_msg(LOG_INFO, "callout: resuming");
  proxy_continue_stream(direction);
}
