// root id "as_callout": every request pauses for an HTTP callout made through the SDK's
// RootContext.httpCall (GET /as-callout on the "callout" cluster); the callback adds
// x-as-callout-status (the callout's :status) to the request and resumes it. Also adds
// metrics through the SDK: counter as_requests, gauge as_gauge (= 7).
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context,
  HeaderPair, Headers, log, LogLevelValues, Counter, Gauge, continue_request,
} from "@solo-io/proxy-runtime";

let requests: Counter | null = null;
let gauge: Gauge | null = null;

function pair(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

function onCalloutDone(origin: Context, headers: u32, body_size: usize, trailers: u32): void {
  const status = stream_context.headers.http_callback.get(":status");
  stream_context.headers.request.add("x-as-callout-status", status);
  log(LogLevelValues.info, "as_callout: answered " + status);
  continue_request();
}

class CalloutRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Callout(context_id, this);
  }
  onConfigure(configuration_size: u32): bool {
    const ok = super.onConfigure(configuration_size);
    requests = new Counter("as_requests");
    gauge = new Gauge("as_gauge");
    return ok;
  }
}

class Callout extends Context {
  constructor(context_id: u32, root_context: CalloutRoot) {
    super(context_id, root_context);
  }
  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    (requests as Counter).increment(1);
    const g = gauge as Gauge;
    g.record(g.metric_id, 7);
    const headers: Headers = [pair(":method", "GET"), pair(":path", "/as-callout"),
                              pair(":authority", "callout.test")];
    const result = this.root_context.httpCall("callout", headers, new ArrayBuffer(0), [], 5000,
                                              this, onCalloutDone);
    log(LogLevelValues.info, "as_callout: dispatched " + result.toString());
    return FilterHeadersStatusValues.StopIteration;
  }
}

registerRootContext((context_id: u32) => { return new CalloutRoot(context_id); }, "as_callout");
