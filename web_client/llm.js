// The optional LLM bridge: an OpenAI-compatible chat endpoint (llama.cpp server, Ollama, vLLM, ...) whose
// streamed reply goes into the voice session token by token. Plain ES module, no dependency.

// "http://host:port/v1" or the full ".../chat/completions" URL -> the completions URL.
export function completionsUrl(base) {
  const url = base.trim().replace(/\/+$/, "");
  if (!/^https?:\/\//.test(url)) throw new Error(`LLM endpoint must be an http(s) URL, got "${base}"`);
  return url.endsWith("/chat/completions") ? url : `${url}/chat/completions`;
}

// Yields the content deltas of one streamed chat completion (server-sent events, "data: {json}" lines).
export async function* streamChat({ endpoint, model, apiKey, messages, signal }) {
  const url = completionsUrl(endpoint);
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  let res;
  try {
    res = await fetch(url, { method: "POST", headers, signal,
      body: JSON.stringify({ model, messages, stream: true }) });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    // fetch says only "Failed to fetch" for a refused connection and for a CORS refusal alike
    throw new Error(`cannot reach ${url} (is it running, and does it allow this page's origin?)`);
  }
  if (!res.ok) {
    const body = await res.text().catch(() => "");
    let detail = body.slice(0, 300);
    try { detail = JSON.parse(body).error?.message ?? detail; } catch { /* not JSON */ }
    throw new Error(`${url} answered ${res.status} ${res.statusText}${detail ? `: ${detail}` : ""}`);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).trim();
      buffer = buffer.slice(newline + 1);
      if (!line.startsWith("data:")) continue;  // comments, event names, blank separators
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(`LLM error: ${chunk.error.message ?? JSON.stringify(chunk.error)}`);
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) yield delta;
    }
  }
}
