/*
 * wasi: a plugin that uses WASI through wasi-libc (stdio, environment, clock).
 *
 * VM start: prints "wasi: env CONFORMANCE_ENV=<value or (unset)>" to stdout.
 * Request:  prints "wasi: stdout <path>" to stdout and "wasi: stderr <path>" to stderr (Envoy
 *           turns them into info and error log lines), and adds x-clock-ok: yes when
 *           clock_gettime(CLOCK_REALTIME) answers a time after 2020.
 */
#include <stdio.h>
#include <time.h>

#include "proxy_wasm.h"

EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t root, uint32_t size) {
  const char *value = getenv("CONFORMANCE_ENV");
  printf("wasi: env CONFORMANCE_ENV=%s\n", value ? value : "(unset)");
  fflush(stdout);
  return 1;
}

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  bytes_t path;
  get_header(MAP_REQUEST_HEADERS, ":path", &path);
  printf("wasi: stdout %.*s\n", (int)path.size, path.data ? path.data : "");
  fflush(stdout);
  fprintf(stderr, "wasi: stderr %.*s\n", (int)path.size, path.data ? path.data : "");
  free(path.data);
  struct timespec now;
  int ok = clock_gettime(CLOCK_REALTIME, &now) == 0 && now.tv_sec > 1577836800;
  add_header_str(MAP_REQUEST_HEADERS, "x-clock-ok", ok ? "yes" : "no");
  return ACTION_CONTINUE;
}
