// root id "as_probe": the AssemblyScript SDK's side of the differential probe (see c/probe.c).
// The request's :path picks the behaviour: /throw (an AssemblyScript exception: the SDK's
// abort logs at critical and calls proc_exit), /local (a local reply with a header and a body
// through the SDK), /prop (request.path and plugin_name read through the SDK),
// /throw-response (the same in the response headers); request bodies: the size logged (buffers the request body and logs its size),
// /bad-map (a header read from a map type the stream does not have: the SDK's CHECK_RESULT).
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, FilterDataStatusValues,
  stream_context, HeaderPair, log, LogLevelValues, send_local_response, GrpcStatusValues,
} from "@solo-io/proxy-runtime";
import {
  get_property, get_buffer_bytes, BufferTypeValues,
} from "@solo-io/proxy-runtime/runtime";

function pair(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

class ProbeRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Probe(context_id, this);
  }
}

class Probe extends Context {
  path: string = "";
  constructor(context_id: u32, root_context: ProbeRoot) {
    super(context_id, root_context);
  }
  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    this.path = stream_context.headers.request.get(":path");
    log(LogLevelValues.info, "as_probe: request " + this.path);
    if (this.path == "/throw") {
      throw new Error("probe threw");
    }
    if (this.path == "/local") {
      send_local_response(418, "as_probe", String.UTF8.encode("short and stout"),
                          [pair("x-as", "local")], GrpcStatusValues.Unknown);
      return FilterHeadersStatusValues.StopIteration;
    }
    if (this.path == "/prop") {
      const p = String.UTF8.decode(get_property("request.path"));
      const n = String.UTF8.decode(get_property("plugin_name"));
      log(LogLevelValues.info, "as_probe: props " + p + " " + n);
    }
    if (this.path == "/bad-map") {
      log(LogLevelValues.info, "as_probe: " + stream_context.headers.http_callback.get(":status"));
    }
    return FilterHeadersStatusValues.Continue;
  }
  onRequestBody(body_buffer_length: usize, end_of_stream: bool): FilterDataStatusValues {
    const body = get_buffer_bytes(BufferTypeValues.HttpRequestBody, 0, body_buffer_length as u32);
    log(LogLevelValues.info, "as_probe: body " + body.byteLength.toString() + " " +
        (end_of_stream ? "end" : "more"));
    return FilterDataStatusValues.Continue;
  }
  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    if (this.path == "/throw-response") {
      throw new Error("probe threw in the response");
    }
    stream_context.headers.response.add("x-as-probe", "1");
    return FilterHeadersStatusValues.Continue;
  }
  onLog(): void {
    log(LogLevelValues.info, "as_probe: log " + this.path);
  }
}

registerRootContext((context_id: u32) => { return new ProbeRoot(context_id); }, "as_probe");
