/*
 * state: metrics and shared data, including the calls a host must refuse.
 *
 * Per request: counter st_requests +2 (and -1, logged status), gauge st_gauge +5 then -2,
 * histogram st_hist records 7 (and an increment on it, logged status); reads back the counter
 * (x-counter) and the gauge (x-gauge), reads the histogram (logged status), defines
 * st_requests again (x-same-id: whether the id is the same). Shared data key st_key counts
 * requests with compare-and-swap (x-shared), and a write with a stale cas logs its status.
 */
#include "proxy_wasm.h"

static uint32_t counter, gauge, histogram;

static void log_status(const char *what, uint32_t status) {
  char line[96] = "state: ";
  sb_cat(line, sizeof line, what, strlen(what));
  sb_cat(line, sizeof line, " status ", 8);
  sb_u32(line, sizeof line, status);
  log_msg(LOG_INFO, line);
}

static void add_number(const char *header, uint64_t value) {
  char text[24] = "";
  sb_u32(text, sizeof text, (uint32_t)value);
  add_header_str(MAP_REQUEST_HEADERS, header, text);
}

EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root, uint32_t size) {
  proxy_define_metric(METRIC_COUNTER, "st_requests", 11, &counter);
  proxy_define_metric(METRIC_GAUGE, "st_gauge", 8, &gauge);
  proxy_define_metric(METRIC_HISTOGRAM, "st_hist", 7, &histogram);
  return 1;
}

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  proxy_increment_metric(counter, 2);
  log_status("counter -1", proxy_increment_metric(counter, -1));
  proxy_increment_metric(gauge, 5);
  log_status("gauge -2", proxy_increment_metric(gauge, -2));
  log_status("histogram record", proxy_record_metric(histogram, 7));
  log_status("histogram increment", proxy_increment_metric(histogram, 1));
  uint64_t value = 0;
  proxy_get_metric(counter, &value);
  add_number("x-counter", value);
  value = 0;
  proxy_get_metric(gauge, &value);
  add_number("x-gauge", value);
  value = 0;
  log_status("histogram get", proxy_get_metric(histogram, &value));
  uint32_t again = 0;
  proxy_define_metric(METRIC_COUNTER, "st_requests", 11, &again);
  add_header_str(MAP_REQUEST_HEADERS, "x-same-id", again == counter ? "yes" : "no");

  char *data = NULL;
  size_t size = 0;
  uint32_t cas = 0, count = 0;
  uint32_t status = proxy_get_shared_data("st_key", 6, &data, &size, &cas);
  if (status == WASM_OK) {
    for (size_t i = 0; i < size; i++) count = count * 10 + (data[i] - '0');
    free(data);
  } else {
    log_status("first get", status);
  }
  char text[12] = "";
  sb_u32(text, sizeof text, count + 1);
  log_status("set", proxy_set_shared_data("st_key", 6, text, strlen(text), cas));
  log_status("stale cas set", proxy_set_shared_data("st_key", 6, "999", 3, cas));
  add_header_str(MAP_REQUEST_HEADERS, "x-shared", text);
  return ACTION_CONTINUE;
}
