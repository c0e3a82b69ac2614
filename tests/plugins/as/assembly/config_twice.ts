// root id "as_config": x-as-config: <plugin configuration> on responses. Requests with
// x-read-twice read the root context's configuration twice in onResponseHeaders, the way the
// SDK README's example does.
//
// SDK bug: onConfigure passes the configuration size where the host expects the r_size pointer,
// so the host writes the size (u32) at address <size>. Small configurations land below the
// static data and do no harm (reading twice is then harmless too, in Envoy 1.40); large ones
// corrupt the heap, and with a 7032-byte configuration the first stream still works while the
// next one traps (stack overflow in proxy_on_context_create) -- in Envoy and in the host alike.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context,
} from "@solo-io/proxy-runtime";

class ConfigRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Config(context_id, this);
  }
}

class Config extends Context {
  twice: bool = false;
  constructor(context_id: u32, root_context: ConfigRoot) {
    super(context_id, root_context);
  }
  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    this.twice = stream_context.headers.request.get("x-read-twice") != "";
    return FilterHeadersStatusValues.Continue;
  }
  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const root_context = this.root_context;
    if (!this.twice) {
      stream_context.headers.response.add("x-as-config", root_context.getConfiguration());
    } else if (root_context.getConfiguration() == "") {
      stream_context.headers.response.add("x-as-config", "empty");
    } else {
      stream_context.headers.response.add("x-as-config", root_context.getConfiguration());
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new ConfigRoot(context_id); }, "as_config");
