"""`GET /`: a one-file web page to try the model: choose or drop a photo, see the top-k labels as
bars with their scores and the time taken. Everything is inline (no CDN, no fonts, no images to
fetch), so it works with no internet. Text from the model or the server is set with
`textContent`, never parsed as HTML; the Content-Security-Policy allows exactly this page's own
script and style (by hash), images from the chosen file (blob:) and requests to this server."""

from __future__ import annotations

import base64
import hashlib

TOP_K = 5  # labels the page asks for

STYLE = """
body{font:15px/1.4 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.3rem;margin:0 0 .2rem}#model{color:#666;font-size:.85rem;margin-bottom:1rem}
#drop{border:2px dashed #999;border-radius:8px;padding:1.5rem;text-align:center;cursor:pointer}
#drop.over{border-color:#2a6;background:#efe}#preview{max-width:100%;max-height:14rem;margin-top:.8rem;display:none}
#token{width:100%;box-sizing:border-box;margin:.6rem 0;padding:.3rem}
.row{display:flex;align-items:center;margin:.3rem 0}.name{width:35%;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{flex:1;background:#eee;height:1.1rem;margin:0 .5rem;border-radius:3px}.fill{background:#2a6;height:100%;border-radius:3px}
.score{width:4.5rem;text-align:right;font-variant-numeric:tabular-nums}#error{color:#b00}#note{color:#a60}#time{color:#666;font-size:.85rem}
"""

SCRIPT = """
const $ = (id) => document.getElementById(id);
const drop = $("drop"), file = $("file");
function show(el, text) { el.textContent = text; }
async function model() {
  const r = await fetch("v1/model", {headers: auth()});
  if (!r.ok) { show($("model"), r.status === 401 ? "enter the token to use this server" : "model: HTTP " + r.status); return; }
  const m = await r.json();
  show($("model"), m.file + " \\u00b7 " + m.arch + " " + m.variant + " \\u00b7 " + m.labels.length + " labels \\u00b7 sha256 " + m.sha256.slice(0, 12));
}
function auth() { const t = $("token").value.trim(); return t ? {"Authorization": "Bearer " + t} : {}; }
async function classify(f) {
  show($("error"), ""); show($("time"), ""); show($("note"), ""); $("results").replaceChildren();
  $("preview").src = URL.createObjectURL(f); $("preview").style.display = "block";
  const t0 = performance.now();
  let r;
  try {
    r = await fetch("v1/classify?top_k=TOP_K&name=" + encodeURIComponent(f.name), {method: "POST", body: f,
      headers: Object.assign({"Content-Type": "application/octet-stream"}, auth())});
  } catch (e) { show($("error"), "the server cannot be reached"); return; }
  const ms = performance.now() - t0;
  let body = null;
  try { body = await r.json(); } catch (e) {}
  const row = body && body.rows ? body.rows[0] : null;
  if (!row || row.error) { show($("error"), (row && row.error) || (body && body.error) || ("HTTP " + r.status)); return; }
  for (const [i, k] of row.top_k.entries()) {
    const div = document.createElement("div"); div.className = "row";
    const name = document.createElement("span"); name.className = "name"; name.textContent = k.label;
    if (i === 0) name.id = "top-label";
    const bar = document.createElement("span"); bar.className = "bar";
    const fill = document.createElement("span"); fill.className = "fill"; fill.style.display = "block";
    fill.style.width = (100 * k.score).toFixed(1) + "%"; bar.append(fill);
    const score = document.createElement("span"); score.className = "score"; score.textContent = k.score.toFixed(4);
    div.append(name, bar, score); $("results").append(div);
  }
  if (row.accepted === false) show($("note"), "this looks like none of the model's labels; the best guesses are shown");
  show($("time"), "server " + (1000 * body.seconds).toFixed(1) + " ms \\u00b7 round trip " + ms.toFixed(1) + " ms");
}
drop.addEventListener("click", () => file.click());
file.addEventListener("change", () => { if (file.files.length) classify(file.files[0]); });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]); });
$("token").addEventListener("change", model);
model();
""".replace("TOP_K", str(TOP_K))

PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>onnx-serve</title><link rel="icon" href="data:,"><style>{STYLE}</style></head>
<body><h1>onnx-serve</h1><div id="model">loading the model&hellip;</div>
<div id="drop">Drop a photo here, or click to choose one<input type="file" id="file" accept="image/*" hidden></div>
<input id="token" type="password" placeholder="Token (only if the server asks for one)" autocomplete="off">
<img id="preview" alt="the chosen photo"><div id="results"></div><div id="note"></div><div id="error" role="alert"></div><div id="time"></div>
<script>{SCRIPT}</script></body></html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; "
       "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
