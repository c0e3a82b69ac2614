/*
 * body: request body rewritten buffered, response body rewritten streamed.
 *
 * Request:  pauses (StopIterationAndBuffer) until end of stream, then replaces the whole body
 *           with its reverse, which needs all of it; logs the buffered size.
 * Response: rewrites every chunk as it passes (lowercase ASCII -> uppercase), so the result is
 *           the same whatever the chunking.
 * With the plugin configuration "stream-request" the request body is streamed instead: every
 * chunk is uppercased as it passes.
 * Both keep the length, so the content-length the client sent stays right.
 */
#include "proxy_wasm.h"

static int stream_request = 0;

EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root, uint32_t size) {
  bytes_t config;
  get_buffer(BUFFER_PLUGIN_CONFIGURATION, 0, size, &config);
  stream_request = config.size == 14 && memcmp(config.data, "stream-request", 14) == 0;
  free(config.data);
  return 1;
}

static void uppercase(uint32_t buffer, uint32_t size) {
  if (size == 0) return;
  bytes_t chunk;
  get_buffer(buffer, 0, size, &chunk);
  for (size_t i = 0; i < chunk.size; i++) {
    if (chunk.data[i] >= 'a' && chunk.data[i] <= 'z') chunk.data[i] -= 32;
  }
  proxy_set_buffer_bytes(buffer, 0, size, chunk.data, chunk.size);
  free(chunk.data);
}

EXPORT(proxy_on_request_body)
uint32_t proxy_on_request_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  if (stream_request) {
    uppercase(BUFFER_REQUEST_BODY, size);
    return ACTION_CONTINUE;
  }
  if (!eos) return ACTION_PAUSE;
  bytes_t body;
  get_buffer(BUFFER_REQUEST_BODY, 0, size, &body);
  for (size_t i = 0; i < body.size / 2; i++) {
    char c = body.data[i];
    body.data[i] = body.data[body.size - 1 - i];
    body.data[body.size - 1 - i] = c;
  }
  proxy_set_buffer_bytes(BUFFER_REQUEST_BODY, 0, size, body.data, body.size);
  char line[64] = "body: buffered request body of ";
  sb_u32(line, sizeof line, body.size);
  sb_cat(line, sizeof line, " bytes", 6);
  log_msg(LOG_INFO, line);
  free(body.data);
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_response_body)
uint32_t proxy_on_response_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  uppercase(BUFFER_RESPONSE_BODY, size);
  return ACTION_CONTINUE;
}
