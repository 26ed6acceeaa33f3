"""``/docs``: a self-contained page rendering ``/openapi.json``.

No CDN and no third-party script: the registry often runs where the internet
is out of reach, and a docs page must not be a way to load foreign code. The
script builds the page with DOM calls and ``textContent`` only.
"""

DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Source Package Registry API</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #1d232a; }
  h1 { font-size: 1.6rem; } h2 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; font-family: ui-monospace, monospace; }
  .op { border: 1px solid #d7dde4; border-radius: 6px; padding: .6rem .9rem; margin: .5rem 0; }
  .method { display: inline-block; min-width: 4.5rem; font-weight: 600; text-transform: uppercase; }
  .get { color: #1565c0; } .post { color: #2e7d32; } .delete { color: #c62828; }
  table { border-collapse: collapse; margin: .4rem 0; } td, th { border-bottom: 1px solid #eceff3; padding: .15rem .6rem; text-align: left; vertical-align: top; }
  code, pre { font-family: ui-monospace, monospace; font-size: 13px; } pre { white-space: pre-wrap; background: #f6f8fa; padding: .6rem; }
</style>
</head>
<body>
<h1 id="title">Source Package Registry API</h1>
<pre id="description"></pre>
<h2>Credentials</h2>
<div id="credentials"></div>
<div id="paths">Loading /openapi.json …</div>
<script>
function el(tag, text, cls) { const e = document.createElement(tag); if (text) e.textContent = text; if (cls) e.className = cls; return e; }
function resolve(spec, schema) {
  // "#/components/schemas/Package" -> that schema, with its name
  if (schema && schema.$ref) { const name = schema.$ref.split("/").pop(); return [name, spec.components.schemas[name]]; }
  return [null, schema];
}
fetch("openapi.json").then(r => r.json()).then(spec => {
  document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
  document.getElementById("description").textContent = spec.info.description;
  const creds = document.getElementById("credentials");
  const ct = el("table"); ct.appendChild(el("tr")).append(el("th", "header"), el("th", "value"));
  for (const scheme of Object.values(spec.components.securitySchemes || {})) {
    const header = scheme.type === "http" ? "Authorization" : scheme.name;
    ct.appendChild(el("tr")).append(el("td", header), el("td", scheme.description || ""));
  }
  creds.appendChild(ct);
  const root = document.getElementById("paths"); root.textContent = "";
  for (const [path, item] of Object.entries(spec.paths)) {
    if (path.startsWith("/api/") || path.startsWith("/{stage}")) continue;
    root.appendChild(el("h2", path));
    for (const [method, op] of Object.entries(item)) {
      if (method === "parameters") continue;
      const box = el("div", null, "op");
      const head = el("div"); head.appendChild(el("span", method, "method " + method)); head.appendChild(el("span", op.summary || ""));
      box.appendChild(head);
      const params = (item.parameters || []).concat(op.parameters || []);
      if (params.length) {
        const t = el("table"); t.appendChild(el("tr")).append(el("th", "parameter"), el("th", "in"), el("th", "schema"));
        for (const p of params) t.appendChild(el("tr")).append(el("td", p.name), el("td", p.in), el("td", JSON.stringify(p.schema)));
        box.appendChild(t);
      }
      if (op.requestBody) {
        for (const [type, media] of Object.entries(op.requestBody.content)) {
          box.appendChild(el("div", "body (" + type + "):"));
          box.appendChild(el("pre", JSON.stringify(media.schema.properties, null, 1)));
        }
      }
      const t = el("table"); t.appendChild(el("tr")).append(el("th", "status"), el("th", "meaning"), el("th", "body"));
      for (const [status, resp] of Object.entries(op.responses)) {
        const body = el("td");
        for (const [type, media] of Object.entries(resp.content || {})) {
          const [name, schema] = resolve(spec, media.schema);
          body.appendChild(el("div", type + (name ? " " + name : "")));
          if (schema && schema.properties) body.appendChild(el("pre", JSON.stringify(schema.properties, null, 1)));
        }
        for (const header of Object.keys(resp.headers || {})) body.appendChild(el("div", "header " + header));
        t.appendChild(el("tr")).append(el("td", status), el("td", resp.description), body);
      }
      box.appendChild(t);
      root.appendChild(box);
    }
  }
  root.appendChild(el("p", "Every path above is also served under /{stag,prod}/ and /api/bkpaas3/{stag,prod}/."));
}).catch(err => { document.getElementById("paths").textContent = "Could not load /openapi.json: " + err; });
</script>
</body>
</html>
"""
