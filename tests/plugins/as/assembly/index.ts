// AssemblyScript test plugins on @solo-io/proxy-runtime 0.1.8 (ABI 0.2.0).
//
// root id "as_headers":    adds x-as-req: 1 to requests and x-as-config: <plugin configuration>
//                          to responses (reading the root configuration once), logs at info.
// With an empty plugin configuration the SDK's onConfigure traps (SDK bug).
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context, log,
  LogLevelValues,
} from "@solo-io/proxy-runtime";

class HeadersRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Headers(context_id, this);
  }
}

class Headers extends Context {
  constructor(context_id: u32, root_context: HeadersRoot) {
    super(context_id, root_context);
  }
  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.request.add("x-as-req", "1");
    log(LogLevelValues.info, "as_headers: request");
    return FilterHeadersStatusValues.Continue;
  }
  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const config = this.root_context.getConfiguration();
    stream_context.headers.response.add("x-as-config", config);
    log(LogLevelValues.info, "as_headers: response");
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new HeadersRoot(context_id); }, "as_headers");
