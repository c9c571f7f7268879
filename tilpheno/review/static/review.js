// tilpheno review page: draw each editable gate over its parent's events, let the reviewer drag it,
// ask the server to recompute counts and % from every event, save with a reason, sign.
// All text from the server is inserted with textContent (never as HTML).
"use strict";
(function () {
  const app = document.getElementById("app");
  if (!app) return;
  const csrf = app.dataset.csrf;
  const W = 300, H = 240, L = 40, R = 6, T = 6, B = 32;
  const SVGNS = "http://www.w3.org/2000/svg";
  let S = null;          // state from the server
  let C = null;          // candidate cuts of the threshold gates, from the server (version C.version)
  let draft = null;      // {tube: {pop: gate}}
  let decided = {};      // the draft's decisions on undetermined gates: {tube: {pop: "positive"}} (the current version's at load)
  let previewSeq = 0, lastShown = 0, inFlight = false, lastSent = 0, pending = false;
  let restored = false;  // the draft kept in this browser is offered once, at the page's first load

  const $ = (id) => document.getElementById(id);
  const key = (tube, pop) => tube + "|" + pop;
  const DECIDED = " decided";   // changedFrom's name of a decision on an undetermined gate: "<population> decided"
  let clipCount = 0;   // one clipPath id per plot
  const clone = (x) => JSON.parse(JSON.stringify(x));
  const fmt = (v, d = 2) => (v === null || v === undefined || Number.isNaN(v)) ? "NA" : Number(v).toFixed(d);
  // a value in compensated linear units, as the axes' decades read: 1,234 / 56.7
  const fmtRaw = (v) => (v === null || v === undefined || Number.isNaN(v)) ? "NA"
    : Math.abs(v) >= 100 ? Math.round(v).toLocaleString("en-US") : Number(v).toFixed(1);

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function sv(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  function message(text, ok) {
    const m = $("message");
    m.textContent = text;
    m.className = "message " + (ok ? "ok" : "bad");
  }

  async function api(url, body) {
    const opts = body === undefined ? { credentials: "same-origin" } : {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    };
    let resp;
    try { resp = await fetch(url, opts); }
    catch (e) {   // no answer (the server stopped, the network dropped): status 0, said like any refusal
      return { status: 0, data: { error: "no answer from the server (" + e.message + "): check that it runs and try again" } };
    }
    let data = {};
    try { data = await resp.json(); } catch (e) { data = { error: "HTTP " + resp.status }; }
    return { status: resp.status, data };
  }

  async function load() {
    const r = await api(app.dataset.state);
    if (r.status !== 200) { message(r.data.error || "could not load the " + app.dataset.noun, false); return; }
    const typed = S ? formsTyped() : null;   // a state read again (after a save or a signature) keeps what was typed
    S = r.data;
    draft = {}; decided = {};
    for (const [tube, entry] of Object.entries(S.current.tubes)) { draft[tube] = clone(entry.gates); decided[tube] = clone(entry.decided || {}); }
    $("version-badge").textContent = "gate version " + S.current_version;
    $("approved-badge").textContent = S.approved_version ? "approved: version " + S.approved_version
      : S.rejected_version ? "rejected: version " + S.rejected_version : S.voided ? "not approved: " + S.voided : "not approved";
    $("approved-badge").classList.toggle("needs-review", !S.approved_version && !S.rejected_version && !!S.voided);
    renderPlots(S.plots, S.populations.current);
    renderTables(S.populations.current, S.release.current, S.release.current_status);
    renderQC(); renderSignatures(); renderOverrule(); renderOOS(); renderVersions(); renderApply(); renderJustify();
    renderUndetermined();
    if (typed) putFormsTyped(typed);
    loadCandidates();
    if (!restored) { restored = true; restoreDraft(); }
  }

  // ---- the draft kept in this browser ----------------------------------------------------------------
  // Every change of the draft (and its reason and deviation justification) is kept in this browser's localStorage under the user and
  // the product, so an expired session (8 h), a closed tab or a crash loses nothing: when this user opens
  // the product again the page puts the kept changes over the current version and says so (from when,
  // which version). It is never saved by itself: a save needs the reason and passes the server's checks.
  // Saving it or resetting the draft forgets it. The out-of-specification justification typed to approve
  // (with no gate changed: a signature signs the saved version) is kept the same way until a signature that
  // sends it (an approval for release) is made, and put back in its field (never signed by itself); so is the
  // sign form's comment, until a signature (which always sends it) is made, and so are the QC flag resolutions
  // (until an approval for release, which signs them, is made), the tick acknowledging the standing rejection
  // (for that rejection only) and the deviation justification of the saved version (for that version, until it
  // is recorded). "Log out" forgets them all (session.js: the user is done at this browser),
  // in every tab: a page loaded before this user's last logout at this browser keeps nothing any more.
  // (review.js is deferred after session.js, which defines tilphenoSession.)
  const draftKey = "tilpheno-draft|" + app.dataset.user + "|" + app.dataset.product;
  const loadedAt = Date.now();
  const loggedOut = () => window.tilphenoSession.loggedOutSince(app.dataset.user, loadedAt);
  // what a refused preview or save (HTTP ``status``) adds about the draft
  const draftNote = (status) => loggedOut()
    ? " You logged out at this browser after this page was loaded, so your unsaved draft is not kept in this browser."
    : status === 401 ? " Your unsaved draft is kept in this browser: log in again and open this " + app.dataset.noun +
      " to get it back." : "";

  // what the sign form and the justification form hold besides the comment and the out-of-specification
  // justification: each flag's QC resolution and the one for all flags of a kind, the tick acknowledging the
  // standing rejection (its signature id) and the deviation justification of the saved version (``version``)
  function formsTyped() {
    const tick = $("overrule-check");
    return { version: S.current_version, resolutions: fieldsTyped("data-resolution", "resolution"),
      kind_resolutions: fieldsTyped("data-resolve-all", "resolveAll"),
      overrule: S.rejection && tick && tick.checked ? S.rejection.id : null,
      justify: $("justify-form").hidden ? "" : $("justify").value };
  }
  const anyTyped = (t) => Object.keys(t.resolutions).length || Object.keys(t.kind_resolutions).length || t.overrule || t.justify;

  // put ``typed`` (formsTyped) back in the fields still empty: a resolution in its flag's field, the tick for the
  // same standing rejection only, the justification for the same version only; what was put back, in words
  function putFormsTyped(typed) {
    const put = [];
    let n = 0;
    for (const [attr, values] of [["data-resolution", typed.resolutions], ["data-resolve-all", typed.kind_resolutions]]) {
      for (const [k, v] of Object.entries(values || {})) {
        const field = document.querySelector("[" + attr + '="' + CSS.escape(k) + '"]');
        if (field && !field.value && typeof v === "string" && v) { field.value = v; n += 1; }
      }
    }
    if (n) put.push(n > 1 ? n + " QC flag resolutions" : "QC flag resolution");
    const tick = $("overrule-check");
    if (tick && !tick.checked && S.rejection && typed.overrule === S.rejection.id) {
      tick.checked = true;
      put.push("tick acknowledging the rejection");
    }
    if (!$("justify-form").hidden && !$("justify").value && typed.justify && typed.version === S.current_version) {
      $("justify").value = typed.justify;
      put.push("deviation justification of version " + S.current_version);
    }
    return put;
  }

  function keepDraft() {
    if (!S || loggedOut()) return;
    const edited = changedFrom(S.current), oos = $("oos-justification").value, comment = $("comment").value;
    const typed = formsTyped();
    try {
      if (edited.length || oos || comment || anyTyped(typed)) {
        localStorage.setItem(draftKey, JSON.stringify(Object.assign(typed, { edited: edited, reason: $("reason").value,
          deviation: $("deviation").value, oos_justification: oos, comment: comment, at: new Date().toISOString() })));
      } else localStorage.removeItem(draftKey);
    } catch (e) { console.warn("the draft could not be kept in this browser: " + e); }
  }

  function restoreDraft() {
    let kept = null;
    try { kept = JSON.parse(localStorage.getItem(draftKey) || "null"); }
    catch (e) { console.warn("the draft kept in this browser could not be read: " + e); }
    if (!kept || !Array.isArray(kept.edited)) return;
    const put = [];
    for (const [tube, pop, g] of kept.edited) if (putChange(tube, pop, g)) put.push(tube + "/" + pop);
    const oos = !$("oos-justification").value && kept.oos_justification ? kept.oos_justification : "";
    const comment = !$("comment").value && kept.comment ? kept.comment : "";
    const typed = putFormsTyped(kept);   // the draft holds formsTyped's fields
    if (!put.length && !oos && !comment && !typed.length) { keepDraft(); return; }
    const when = String(kept.at).slice(0, 19).replace("T", " ") + " UTC";
    const moved = kept.version !== S.current_version ? ", made on version " + kept.version + "; the " + app.dataset.noun +
      " is now at version " + S.current_version : "";
    if (oos) $("oos-justification").value = oos;
    if (comment) $("comment").value = comment;
    const unsigned = [comment ? "comment" : "", oos ? "out-of-specification justification" : ""].filter(Boolean).concat(typed);
    const recorded = typed.some((t) => t.startsWith("deviation"));
    if (!put.length) {   // no gate changed: what was typed to sign (or to justify the saved version), alone
      message("Restored your unsigned " + unsigned.slice(0, -1).join(", ") + (unsigned.length > 1 ? " and " : "") +
        unsigned[unsigned.length - 1] + " of " + when + moved + ": " +
        (unsigned.length > 1 ? "they are in their fields" : "it is in its field") +
        (oos ? " (the justification when you choose \u201capproved for release\u201d)" : "") +
        "; nothing is signed" + (recorded ? " or recorded until you sign or record it." : " until you sign."), false);
      return;
    }
    if (!$("reason").value && kept.reason) $("reason").value = kept.reason;
    if (!$("deviation").value && kept.deviation) $("deviation").value = kept.deviation;
    schedulePreview(true);
    message("Restored your unsaved draft of " + when + " (" + put.join(", ") + unsigned.map((u) => "; the " + u).join("") +
      ")" + (moved ? moved + ": your changes are put over it, compare before saving" : "") +
      ". It is not saved: save it with a reason, or reset the draft.", false);
  }

  // ---- candidate cuts ------------------------------------------------------------------------------
  async function loadCandidates() {
    const r = await api(app.dataset.candidates);
    if (r.status !== 200) { message(r.data.error || "could not load the candidate cuts", false); return; }
    C = r.data;
    if ((C.left_out || []).length) message("No unstained-control candidate: " + C.left_out.join("; "), false);
    renderCandidates();
  }

  function renderCandidates() {
    if (!C || !S.plots) return;
    for (const p of S.plots) {
      const box = document.querySelector('[data-candidates-for="' + CSS.escape(key(p.tube, p.population)) + '"]');
      const cuts = ((C.tubes[p.tube] || {})[p.population]) || [];
      if (!box || !cuts.length) continue;
      box.textContent = "";
      box.appendChild(el("span", { class: "candidates-title" }, (p.type === "polygon" ? "lower edges weighed (" + p.dims[1] + "/" + p.dims[0] + " ratio"
        : "cuts weighed (linear units") + ", % of parent, version " + C.version + "):"));
      for (const c of cuts) {
        // a polygon candidate (the singlets wedge) is named by its lower ratio y/x
        const b = el("button", { type: "button", class: "candidate", "data-candidate": key(p.tube, p.population) + "|" + c.rule,
          title: c.meaning + (c.vertices ? "" : " (transformed scale " + fmt(c.cut, 3) + ")") },
          c.label + " " + (c.vertices ? "ratio " + fmt(c.cut, 3) : fmtRaw(c.raw)) + " (" + fmt(c.pct_of_parent, 1) + "%)");
        b.addEventListener("click", () => useCandidate(p, c));
        box.appendChild(b);
      }
    }
  }

  function useCandidate(p, c) {
    ownCut(p);
    const g = draft[p.tube][p.population];
    if (c.vertices) g.vertices = clone(c.vertices);
    else g[g.low !== null ? "low" : "high"] = c.value;
    drawOverlay(p);
    if (!$("reason").value) $("reason").value = p.population + (c.vertices ? ": lower edge moved to the " + c.label +
      " candidate (" + p.dims[1] + "/" + p.dims[0] + " ratio " + fmt(c.cut, 4) + ")" : ": cut moved to the " + c.label + " candidate ("
      + fmtRaw(c.raw) + "; " + fmt(c.cut, 4) + " transformed)");
    schedulePreview(true);
  }

  // ---- plots -------------------------------------------------------------------------------------
  // the plotted ranges: as in the reports, or (the "whole gate" button) every gate coordinate
  const view = (p) => (p._whole ? p.whole_ranges : p.ranges);
  const viewTicks = (p) => (p._whole ? p.whole_ticks : p.ticks);

  function scales(p) {
    const [x0, x1] = view(p)[0];
    const [y0, y1] = view(p).length > 1 ? view(p)[1] : [0, 1];
    return {
      px: (x) => L + (x - x0) / (x1 - x0) * (W - L - R),
      py: (y) => H - B - (y - y0) / (y1 - y0) * (H - B - T),
      ix: (px) => x0 + (px - L) / (W - L - R) * (x1 - x0),
      iy: (py) => y0 + (H - B - py) / (H - B - T) * (y1 - y0),
    };
  }

  // a flag on a plot in full, naming the file it was raised on where that is another (a control's gates)
  const flagText = (p, f) => f.severity + " " + f.code + (f.file && f.file !== p.file ? " (on " + f.file + ")" : "") +
    ": " + f.message;

  function renderPlots(plots, tables) {
    const box = $("plots");
    box.textContent = "";
    // a plot re-drawn after a drag keeps the view the reviewer chose
    const whole = new Set((S && S.plots ? S.plots : []).filter((q) => q._whole).map((q) => key(q.tube, q.population)));
    for (const p of plots) {
      const flagged = (p.flags || []).length > 0;
      const card = el("div", { class: flagged ? "plot flagged" : "plot", "data-plot": key(p.tube, p.population) });
      card.appendChild(el("h3", {}, p.tube + ": " + p.population + " (of " + p.parent + ") on " + p.dims.join(" vs ")));
      if (flagged) {   // each flag in full: the gate, the size of the problem, what to look at
        const box = el("div", { class: "gate-flags", "data-gate-flags": key(p.tube, p.population) });
        box.appendChild(el("strong", {}, "needs review: " + p.flags.map((f) => f.code).join(", ")));
        for (const f of p.flags) box.appendChild(el("p", { class: "gate-flag", "data-flag": f.code }, flagText(p, f)));
        card.appendChild(box);
      }
      if ((p.notes || []).length) {   // the gate's flags that need no review (info), in full too
        const box = el("div", { class: "gate-notes", "data-gate-notes": key(p.tube, p.population) });
        for (const f of p.notes) box.appendChild(el("p", { class: "gate-flag", "data-note": f.code }, flagText(p, f)));
        card.appendChild(box);
      }
      if (p.type === "none") {   // a gate the run could not place (gate_failed): its parent's events, nothing to drag
        card.appendChild(el("p", { class: "no-gate", "data-no-gate": key(p.tube, p.population) },
          "No gate: the run could not place this gate (see the flag); the plot shows the events of " + p.parent + "."));
      }
      card.appendChild(el("div", { class: "pct", "data-pct": key(p.tube, p.population) }, ""));
      const stack = el("div", { class: "stack" });
      const canvas = el("canvas", { width: W, height: H });
      if (JSON.stringify(p.whole_ranges) !== JSON.stringify(p.ranges)) {
        // part of a gate lies beyond every event (a polygon's far corners): out of view until asked for
        p._whole = whole.has(key(p.tube, p.population));
        const zoom = el("button", { type: "button", class: "zoom", "data-zoom": key(p.tube, p.population),
          title: "Show every corner of the gate (to drag one that lies beyond the events), or the report's view" },
          p._whole ? "report view" : "whole gate");
        zoom.addEventListener("click", () => {
          p._whole = !p._whole;
          zoom.textContent = p._whole ? "report view" : "whole gate";
          drawEvents(canvas, p);
          drawOverlay(p);
        });
        card.appendChild(zoom);
      }
      const svg = sv("svg", { width: W, height: H, "data-svg": key(p.tube, p.population) });
      stack.appendChild(canvas); stack.appendChild(svg); card.appendChild(stack);
      if (p.type === "range" || p.type === "polygon") card.appendChild(el("div", { class: "candidates", "data-candidates-for": key(p.tube, p.population) }));
      if (((S.current.tubes[p.tube] || {}).undetermined || {})[p.population]) card.appendChild(decideButtons(p));
      box.appendChild(card);
      drawEvents(canvas, p);
      p._svg = svg;
      drawOverlay(p);
    }
    S.plots = plots;
    updatePlotLabels(tables);
    renderCandidates();
  }

  function drawEvents(canvas, p) {
    const ctx = canvas.getContext("2d");
    const s = scales(p);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    if (p.dims.length === 1) {
      const xs = p.events[0], bins = 80, counts = new Array(bins).fill(0);
      const [x0, x1] = view(p)[0];
      for (const x of xs) { const b = Math.floor((x - x0) / (x1 - x0) * bins); if (b >= 0 && b < bins) counts[b]++; }
      const m = Math.max(1, ...counts);
      ctx.fillStyle = "#5b7fa8";
      for (let b = 0; b < bins; b++) {
        const h = counts[b] / m * (H - B - T);
        ctx.fillRect(s.px(x0 + b * (x1 - x0) / bins), H - B - h, (W - L - R) / bins, h);
      }
    } else {
      ctx.save();   // events beyond the plotted ranges are not drawn in the margins
      ctx.beginPath(); ctx.rect(L, T, W - L - R, H - B - T); ctx.clip();
      ctx.fillStyle = "rgba(40, 70, 120, 0.35)";
      const xs = p.events[0], ys = p.events[1];
      for (let i = 0; i < xs.length; i++) ctx.fillRect(s.px(xs[i]), s.py(ys[i]), 1.6, 1.6);
      ctx.restore();
    }
    ctx.strokeStyle = "#444"; ctx.beginPath(); ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B); ctx.stroke();
  }

  function ellipsePoints(g, s) {
    const [[a, b], [, c]] = g.covariance;
    const l11 = Math.sqrt(a), l21 = b / l11, l22 = Math.sqrt(Math.max(c - l21 * l21, 1e-300));
    const r = Math.sqrt(g.distance_square), pts = [];
    for (let i = 0; i <= 64; i++) {
      const t = 2 * Math.PI * i / 64, u = Math.cos(t) * r, v = Math.sin(t) * r;
      pts.push([s.px(g.mean[0] + l11 * u), s.py(g.mean[1] + l21 * u + l22 * v)]);
    }
    return { pts, rim: [g.mean[0] + l11 * r, g.mean[1] + l21 * r], l: [l11, l21, l22] };
  }

  function shape(g, s, cls) {
    if (g.type === "range") {
      const grp = sv("g", { class: cls });
      for (const k of ["low", "high"]) {
        if (g[k] === null) continue;
        grp.appendChild(sv("line", { x1: s.px(g[k]), x2: s.px(g[k]), y1: T, y2: H - B, class: cls }));
      }
      return grp;
    }
    if (g.type === "polygon") {
      return sv("polygon", { points: g.vertices.map((v) => s.px(v[0]) + "," + s.py(v[1])).join(" "), class: cls });
    }
    if (g.type === "ellipsoid") {
      return sv("polygon", { points: ellipsePoints(g, s).pts.map((q) => q.join(",")).join(" "), class: cls });
    }
    return sv("g", {});
  }

  // Labelled ticks from the server (raw decades on logicle axes, as in the reports) and the axis names.
  function drawTicks(svg, p, s) {
    const ticks = viewTicks(p) || [];
    const text = (attrs, label) => { const t = sv("text", Object.assign({ class: "axis" }, attrs)); t.textContent = label; svg.appendChild(t); };
    for (const [pos, label] of ticks[0] || []) {
      const x = s.px(pos);
      svg.appendChild(sv("line", { x1: x, x2: x, y1: H - B, y2: H - B + 4, class: "tick" }));
      if (label) text({ x: x, y: H - B + 14, "text-anchor": "middle", "data-tick": "x" }, label);
    }
    text({ x: W - R, y: H - 2, "text-anchor": "end" }, p.dims[0]);
    if (p.dims.length > 1) {
      for (const [pos, label] of ticks[1] || []) {
        const y = s.py(pos);
        svg.appendChild(sv("line", { x1: L - 4, x2: L, y1: y, y2: y, class: "tick" }));
        if (label) text({ x: L - 6, y: y + 3, "text-anchor": "end", "data-tick": "y" }, label);
      }
      text({ x: 2, y: H - 2 }, p.dims[1] + " (y)");
    }
  }

  function drawOverlay(p) {
    const svg = p._svg, s = scales(p), g = (draft[p.tube] || {})[p.population];
    svg.textContent = "";
    drawTicks(svg, p, s);
    if (!g) return;   // no gate (type "none"): the events and axes only
    // the gates are drawn clipped to the frame (a polygon may reach beyond the plotted ranges)
    const clipId = p._clip || (p._clip = "tp-clip-" + (++clipCount));
    const clip = sv("clipPath", { id: clipId });
    clip.appendChild(sv("rect", { x: L, y: T, width: W - L - R, height: H - B - T }));
    svg.appendChild(clip);
    const gates = sv("g", { "clip-path": "url(#" + clipId + ")" });
    if (p.automatic) gates.appendChild(shape(p.automatic, s, "auto"));
    // the saved current version's gate, where the draft moved it (after a refused save: the newer version's)
    const saved = (S.current.tubes[p.tube] || { gates: {} }).gates[p.population];
    const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
    if (saved && !same(saved, g) && !same(saved, p.automatic)) gates.appendChild(shape(saved, s, "saved"));
    gates.appendChild(shape(g, s, "draft"));
    svg.appendChild(gates);
    const h = (name, attrs) => {
      const e = sv(attrs.tag || "circle", Object.assign({ class: "handle", "data-handle": key(p.tube, p.population) + "|" + name }, attrs));
      e.addEventListener("pointerdown", (ev) => startDrag(ev, p, name));
      svg.appendChild(e);
    };
    if (g.type === "range") {
      for (const k of ["low", "high"]) {
        if (g[k] === null) continue;
        h(k, { tag: "line", x1: s.px(g[k]), x2: s.px(g[k]), y1: T, y2: H - B, class: "line-handle" });
        h(k + "-knob", { cx: s.px(g[k]), cy: T + 12, r: 6 });
      }
    } else if (g.type === "polygon") {
      g.vertices.forEach((v, i) => h("v" + i, { cx: s.px(v[0]), cy: s.py(v[1]), r: 5 }));
    } else if (g.type === "ellipsoid") {
      const e = ellipsePoints(g, s);
      h("centre", { cx: s.px(g.mean[0]), cy: s.py(g.mean[1]), r: 6 });
      h("rim", { cx: s.px(e.rim[0]), cy: s.py(e.rim[1]), r: 5 });
    }
  }

  function clamp(v, b) { return Math.min(b[1], Math.max(b[0], v)); }

  function startDrag(ev, p, name) {
    ev.preventDefault();
    ownCut(p);
    const s = scales(p), svg = p._svg, g = draft[p.tube][p.population];
    const rect = () => svg.getBoundingClientRect();
    const start = { x: ev.clientX, y: ev.clientY, mean: g.mean ? g.mean.slice() : null };
    const move = (e) => {
      const r = rect(), x = s.ix(e.clientX - r.left), y = s.iy(e.clientY - r.top);
      // within the plotted ranges (inside the allowed bounds): what is dragged stays in view
      const v = view(p);
      if (g.type === "range") {
        g[name.startsWith("low") ? "low" : "high"] = clamp(x, v[0]);
      } else if (g.type === "polygon") {
        g.vertices[Number(name.slice(1))] = [clamp(x, v[0]), clamp(y, v[1])];
      } else if (g.type === "ellipsoid" && name === "centre") {
        const dx = s.ix(e.clientX - r.left) - s.ix(start.x - r.left), dy = s.iy(e.clientY - r.top) - s.iy(start.y - r.top);
        g.mean = [clamp(start.mean[0] + dx, v[0]), clamp(start.mean[1] + dy, v[1])];
      } else if (g.type === "ellipsoid") {
        const [[a, b], [, c]] = g.covariance, det = a * c - b * b;
        const dx = x - g.mean[0], dy = y - g.mean[1];
        g.distance_square = Math.min(100, Math.max(1e-6, (c * dx * dx - 2 * b * dx * dy + a * dy * dy) / det));
      }
      drawOverlay(p);
      schedulePreview(false);
    };
    const up = () => {
      document.removeEventListener("pointermove", move);
      document.removeEventListener("pointerup", up);
      schedulePreview(true);
    };
    document.addEventListener("pointermove", move);
    document.addEventListener("pointerup", up);
  }

  function draftBody() {
    const tubes = {};
    for (const [tube, gates] of Object.entries(draft)) tubes[tube] = { gates, decided: undecidedToo(tube) };
    return { tubes };
  }

  // the draft's decisions of ``tube`` as the server takes them: each accepted gate "positive", each the
  // current version accepted and the draft no longer does "undecided"
  function undecidedToo(tube) {
    const out = clone(decided[tube] || {});
    for (const pop of Object.keys((S.current.tubes[tube] || {}).decided || {})) if (!(pop in out)) out[pop] = "undecided";
    return out;
  }

  // an undetermined gate (one population, no FMO or unstained control, held as positive): a button that
  // accepts the held positive call as it stands, the gate determined without moving its cut, and one that judges
  // the one population negative, the gate at the negative call's cut (as one_population: negative places it: the
  // numbers are those of the gate saved); each saved with a reason, audited, and withdrawn by a second click
  // (the gate as held again)
  const CALLS = { positive: ["accept the held positive call (undetermined: no FMO or unstained control)",
    "withdraw: held positive call accepted", "the held positive call accepted in the draft (its cut unchanged)"],
  negative: ["judge the one population negative (the negative call's cut)", "withdraw: one population judged negative",
    "the one population judged negative in the draft (its cut moved to the negative call's)"] };
  function decideButtons(p) {
    const k = key(p.tube, p.population), entry = S.current.tubes[p.tube];
    const gates = { positive: entry.undetermined[p.population], negative: ((S.negative_calls || {})[p.tube] || {})[p.population] };
    const box = el("div", { class: "decide-box" });
    const buttons = {};
    const show = () => {
      for (const [call, b] of Object.entries(buttons)) b.textContent = CALLS[call][(decided[p.tube] || {})[p.population] === call ? 1 : 0];
    };
    for (const call of Object.keys(CALLS)) {
      if (!gates[call]) continue;   // no negative call recorded: the reviewer moves the cut instead
      const b = buttons[call] = el("button", { type: "button", class: "decide", [call === "positive" ? "data-decide" : "data-decide-negative"]: k });
      b.addEventListener("click", () => {
        decided[p.tube] = decided[p.tube] || {};
        const on = decided[p.tube][p.population] === call;
        if (on) delete decided[p.tube][p.population]; else decided[p.tube][p.population] = call;
        draft[p.tube][p.population] = clone(on ? gates.positive : gates[call]);   // the held gate is the positive call's
        show();
        drawOverlay(p);
        message(p.population + ": " + (on ? "decision withdrawn in the draft (the gate as held)" : CALLS[call][2]) +
          "; save it with a reason.", true);
        schedulePreview(true);
      });
      box.appendChild(b);
    }
    show();
    p._showDecided = show;
    return box;
  }

  // the reviewer's own cut on a gate decided decides it by itself: the decision (the held positive call accepted
  // or the negative call) is withdrawn in the draft (the server refuses a decision with a cut of the reviewer's own)
  function ownCut(p) {
    if (!(p.population in (decided[p.tube] || {}))) return;
    delete decided[p.tube][p.population];
    if (p._showDecided) p._showDecided();
  }

  // before signing: the gates the current version leaves undetermined, and that release stays not evaluable
  function renderUndetermined() {
    const box = $("undetermined-notice");
    const left = S.undetermined || [];
    box.hidden = !left.length;
    box.textContent = left.length ? "Undetermined gates left in version " + S.current_version + ": " + left.join(", ") +
      " (one population, no FMO or unstained control). Whatever you sign, release stays not evaluable (undetermined) " +
      "for the criteria resting on them, until a reviewer accepts the held positive call or moves the cut, and saves it." : "";
  }

  function schedulePreview(final) {
    keepDraft();
    const now = Date.now();
    if (!final && (inFlight || now - lastSent < 100)) { pending = true; return; }
    sendPreview(final);
  }

  async function sendPreview(final) {
    const seq = ++previewSeq;
    inFlight = true; lastSent = Date.now(); pending = false;
    const r = await api(app.dataset.preview, { gates: draftBody(), plots: final });
    inFlight = false;
    if (seq < lastShown) return;
    lastShown = seq;
    if (r.status !== 200) { message((r.data.error || "preview failed") + draftNote(r.status), false); return; }
    renderTables(r.data.populations, r.data.release, r.data.release_status);
    askDeviation(r.data.overturns);
    if (final && r.data.plots) { renderPlots(r.data.plots, r.data.populations); }
    if (pending) schedulePreview(true);
  }

  // ---- tables -------------------------------------------------------------------------------------------
  function rowsBy(tables) {
    const out = {};
    for (const [tube, rows] of Object.entries(tables)) for (const r of rows) out[key(tube, r.population)] = r;
    return out;
  }

  // a population resting on an undetermined gate (one population, no FMO or unstained control) has its count and
  // percentages blank (null) in the server's table: the reason stands in their place, as in the report; a
  // population not within the lymphocyte gate has no % of live lymph whatever its gates: NA, as for any such one
  const undetermined = (row) => "undetermined: no FMO or unstained control (" + (row.undetermined || []).join(", ") + ")";
  const countOf = (row) => (row.count === null ? undetermined(row) : row.count === undefined ? "NA" : String(row.count));
  const pctOf = (row, column) => (row.count === null && (column !== "pct_of_live_lymph" || row.within_lymph)
    ? undetermined(row) : fmt(row[column]));
  const shareOf = (row) => (row.count === null ? undetermined(row) : fmt(row.pct_of_parent) + "% (n=" + row.count + ")");

  function updatePlotLabels(currentTables) {
    const auto = rowsBy(S.populations.automatic), cur = rowsBy(currentTables);
    for (const e of document.querySelectorAll("[data-pct]")) {
      const a = auto[e.dataset.pct], c = cur[e.dataset.pct];
      if (!a || !c) continue;
      e.textContent = "automatic " + shareOf(a) + "  ->  draft " + shareOf(c);
    }
  }

  function renderTables(currentTables, release, status) {
    const auto = rowsBy(S.populations.automatic), cur = rowsBy(currentTables);
    const t = el("table", { class: "grid", id: "population-table" });
    const head = el("tr");
    // "% live lymph" only where some population has one (a strategy without a lymphocyte gate has none)
    const lymph = Object.values(cur).some((c) => c.pct_of_live_lymph !== null && c.pct_of_live_lymph !== undefined);
    const heads = ["tube / population", "auto n", "auto % parent", "draft n", "draft % parent"];
    for (const h of lymph ? heads.concat(["draft % live lymph"]) : heads) head.appendChild(el("th", {}, h));
    t.appendChild(head);
    for (const [k, c] of Object.entries(cur)) {
      const a = auto[k] || {};
      const tr = el("tr", { "data-row": k });
      if (a.count !== c.count) tr.className = "changed";
      const cells = [k, countOf(a), pctOf(a, "pct_of_parent"), countOf(c), pctOf(c, "pct_of_parent")];
      for (const v of lymph ? cells.concat([pctOf(c, "pct_of_live_lymph")]) : cells) tr.appendChild(el("td", {}, v));
      t.appendChild(tr);
    }
    const box = $("populations"); box.textContent = ""; box.appendChild(t);
    const rt = el("table", { class: "grid", id: "release-table" });
    const rh = el("tr");
    for (const h of ["criterion", "rule", "draft value", "outcome"]) rh.appendChild(el("th", {}, h));
    rt.appendChild(rh);
    for (const r of release) {
      const tr = el("tr");
      for (const v of [r.criterion, r.rule, r.shown, r.outcome]) tr.appendChild(el("td", {}, String(v)));
      rt.appendChild(tr);
    }
    const rb = $("release"); rb.textContent = "";
    rb.appendChild(el("p", { id: "release-status" }, releaseStatus(status)));
    rb.appendChild(el("p", { id: "run-release" }, runRelease(S.release)));
    // the saved version's overturns of the run's determined fails, each with its justification (who, when, why)
    for (const d of S.release.deviations) {
      rb.appendChild(el("p", { class: "rejection", "data-deviation": d.criterion }, "version " + S.current_version + ": " + d.text));
    }
    // the standing approval releases gates that fail the spec: the failed criteria and the approver's justification
    if (S.release.oos_approved) rb.appendChild(el("p", { class: "rejection", id: "oos-release" }, S.release.oos_approved));
    rb.appendChild(rt);
    updatePlotLabels(currentTables);
  }

  // what the release section says of ``status``, the release status on the draft's gates: the released status
  // once the draft is the approved current version ("released out of specification" where it fails); the
  // rejection once the draft is the rejected current version (who, when, why: it is not released, whatever its
  // criteria give); else the release once these gates are approved (the approval resolves the review flags; the
  // run's release, phenotypes.csv, is held by those flags until then)
  function releaseStatus(status) {
    const automatic = "criteria on the automatic gates: " + S.release.automatic_status;
    const unsaved = changedFrom(S.current).length;
    if (S.rejection && S.rejected_version === S.current_version && !unsaved) {
      return "release status: rejected (version " + S.current_version + " rejected by " + signedBy(S.rejection) + ": \u201c" +
        S.rejection.comment + "\u201d; criteria on its gates: " + status + "; " + automatic + ")";
    }
    if (S.approved_version !== S.current_version || unsaved) {
      return "draft release status: " + status + " once these gates are approved (" + automatic + ")";
    }
    return "release status: " + status + (S.release.oos_approved ? ", released out of specification" : "") +
      " (version " + S.current_version + " approved for release; " + automatic + ")";
  }

  // the saved version overturns a determined fail with no justification recorded (saved before deviations were):
  // it is not approved for release until one is added to it, here
  function renderJustify() {
    const open = S.release.deviations.filter((d) => !d.justified);
    $("justify-form").hidden = !open.length;
    $("justify-what").textContent = open.length ? "Version " + S.current_version + " overturns the run's determined fail on " +
      open.map((d) => d.criterion).join("; ") + " with no deviation justification recorded: it is not approved for release " +
      "until one is added (by someone other than its approver)." : "";
  }

  // "the run's release: not evaluable (gating needs review; CD3+ T cells awaits review of missing_fmo (CD3+))"
  function runRelease(release) {
    const why = release.run_held.map((h) => h.criterion + " awaits review of " + h.held_by.join(", "));
    if (release.run_review === "needs review") why.unshift("gating needs review");
    return "the run's release: " + release.run_status + (why.length ? " (" + why.join("; ") + ")" : "");
  }

  // the draft overturns the run's determined fail on these criteria (the server's preview says which):
  // saving it needs a deviation justification, asked for beside the reason
  function askDeviation(overturns) {
    const box = $("deviation-box");
    box.hidden = !(overturns && overturns.length);
    $("deviation-what").textContent = box.hidden ? "" : "These gates overturn the run's determined fail on " +
      overturns.join("; ") + ", which no QC flag asked to review: say why in the deviation justification; " +
      "the audit trail and the certificate keep it.";
  }

  function warningFlags() { return S.qc_flags.filter((f) => f.severity === "warning" || f.severity === "error"); }

  function renderQC() {
    const box = $("qc"); box.textContent = "";
    if (!S.qc_flags.length) { box.appendChild(el("p", {}, "none")); }
    for (const f of S.qc_flags) box.appendChild(el("p", {}, f.severity + " " + f.code + " (" + f.file + "): " + f.message));
    const res = $("resolutions"); res.textContent = "";
    const flags = warningFlags(), kinds = new Map();
    for (const f of flags) kinds.set(f.code, (kinds.get(f.code) || 0) + 1);
    // several flags of one kind (e.g. no_time_channel on each FlowJo-exported file): one resolution for all
    // of them; the signature still records one resolution per flag, naming it (the server's resolutions_typed)
    for (const [code, n] of kinds) {
      if (n < 2) continue;
      const lab = el("label", {}, "Resolution of all " + n + " " + code + " flags (each of them left empty below gets it)");
      lab.appendChild(el("input", { "data-resolve-all": code, maxlength: "2000" }));
      res.appendChild(lab);
    }
    flags.forEach((f, i) => {
      const lab = el("label", {}, "Resolution of " + f.code + " (" + f.file + ") (required to approve)");
      lab.appendChild(el("input", { "data-resolution": f.code + ":" + f.file + ":" + i, "data-code": f.code, maxlength: "2000" }));
      res.appendChild(lab);
    });
  }

  // the fields as typed: {flag key: its own resolution} and {code: the one for all flags of that kind}; the
  // server gives each flag its own unless that is empty or only whitespace, else its kind's
  function fieldsTyped(attr, name) {
    const typed = {};
    for (const e of document.querySelectorAll("[" + attr + "]")) if (e.value) typed[e.dataset[name]] = e.value;
    return typed;
  }

  // who signed, when: "Dave Tester (dave) on 2026-12-04 18:40:12 UTC"
  const signedBy = (s) => s.full_name + " (" + s.username + ") on " + s.signed_at.slice(0, 19).replace("T", " ") + " UTC";

  // the standing rejection of the current version: shown where an approval is signed, which overrules it
  function renderOverrule() {
    const box = $("overrule"); box.textContent = "";
    const r = S.rejection;
    if (!r || !document.querySelector('#meaning option[value="approved for release"]')) return;
    box.appendChild(el("p", { class: "rejection", id: "rejection-notice" }, "Version " + r.version + " was rejected by " +
      signedBy(r) + ": \u201c" + r.comment + "\u201d. Approving it overrules this rejection; the audit trail keeps both."));
    const lab = el("label", {}, " I have read this rejection and approve over it (say why in the comment)");
    lab.prepend(el("input", { type: "checkbox", id: "overrule-check" }));
    box.appendChild(lab);
  }

  // approving the current version, which fails the spec on its gates, is an out-of-specification release:
  // named where it is signed, with the field of its own justification (required; the comment does not count)
  function renderOOS() {
    // the four-eyes rule refuses this user's approval (they saved or justified the version): said before they type
    const barred = $("meaning").value === "approved for release" && !!S.four_eyes;
    $("four-eyes-notice").hidden = !barred;
    $("four-eyes-notice").textContent = barred ? S.four_eyes + ": your approval would be refused; you may sign it reviewed or rejected." : "";
    const shown = $("meaning").value === "approved for release" && !!S.release.oos_current;
    $("oos-box").hidden = !shown;
    $("oos-notice").textContent = shown ? "Version " + S.current_version + " fails the release criteria " + S.release.oos_current +
      ": approving it is an out-of-specification release; say why it is released anyway in the out-of-specification justification (required)." : "";
  }

  // a valid approval or rejection that a later one of the other meaning decided against (an approval over a
  // rejection, a rejection after an approval) is not the product's decision: its line says which one is
  const decides = (s) => s.valid && (s.meaning === "approved for release" || s.meaning === "rejected");
  function overruledBy(s) {
    const standing = S.signatures.filter(decides).pop();
    return decides(s) && standing && standing.id !== s.id && standing.meaning !== s.meaning ? standing : null;
  }

  function renderSignatures() {
    const box = $("signatures"); box.textContent = "";
    if (!S.signatures.length) box.appendChild(el("p", {}, "none yet"));
    for (const s of S.signatures) {
      const p = el("p", { class: s.valid ? "valid" : "void", "data-signature": s.id });
      const over = overruledBy(s);
      p.textContent = s.full_name + " (" + s.username + ", " + s.role + "): " + s.meaning + ", version " + s.version +
        ", " + s.signed_at.slice(0, 19).replace("T", " ") + " UTC, data " + s.data_sha256.slice(0, 12) + "... " +
        (s.valid ? "VALID" + (s.note ? " - " + s.note : "") : "VOID - " + s.void_reason) +
        (over ? " - not the decision: " + (over.meaning === "rejected" ? "rejected after it" : "approved for release over it") +
          " by " + signedBy(over) + " (signature " + over.id + ")" : "") +
        (s.comment ? "; comment: \u201c" + s.comment + "\u201d" : "") +
        (s.oos_justification ? "; out-of-specification justification: \u201c" + s.oos_justification + "\u201d" : "");
      box.appendChild(p);
    }
  }

  // newest first; each version but the current one says what replaced it (a re-run's automatic gates: the files
  // it replaced and its audit entry), with a link to that version's line
  function renderVersions() {
    const box = $("versions"); box.textContent = "";
    for (const v of S.versions.slice().reverse()) {
      const p = el("p", { "data-version": v.version, id: "version-" + v.version }, "v" + v.version + " (" + v.source + ") by " +
        v.created_by + ", " + v.created_at.slice(0, 19).replace("T", " ") + " UTC: " + v.reason +
        (v.version === S.current_version ? " (current version)" : ""));
      if (v.replaced_by) {
        p.appendChild(document.createTextNode(" \u2014 "));
        p.appendChild(el("a", { href: "#version-" + v.replaced_by.version, "data-replaced-by": v.replaced_by.version },
          v.replaced_by.words));
      }
      box.appendChild(p);
    }
  }

  function renderApply() {
    const sel = $("apply-gate");
    if (!sel) return;
    sel.textContent = "";
    for (const p of S.plots) {
      if (p.type !== "none") sel.appendChild(el("option", { value: key(p.tube, p.population) }, p.tube + ": " + p.population));
    }
  }

  // ---- forms ---------------------------------------------------------------------------------------------
  // the valid approval for release of the current version, the product's standing decision (a save voids it)
  function standingApproval() {
    if (S.approved_version !== S.current_version) return null;
    const mine = S.signatures.filter((s) => s.valid && s.meaning === "approved for release" && s.version === S.current_version);
    return mine.length ? mine[mine.length - 1] : null;
  }

  // the gates of the draft that differ from those of ``gate_set`` (a version's): [[tube, population, gate], ...]
  function changedFrom(gateSet) {
    const out = [];
    for (const [tube, gates] of Object.entries(draft)) {
      for (const [pop, g] of Object.entries(gates)) {
        const was = (gateSet.tubes[tube] || { gates: {} }).gates[pop];
        if (JSON.stringify(g) !== JSON.stringify(was)) out.push([tube, pop, clone(g)]);
      }
      const before = (gateSet.tubes[tube] || {}).decided || {}, now = decided[tube] || {};
      for (const pop of new Set([...Object.keys(before), ...Object.keys(now)])) {
        if (before[pop] !== now[pop]) out.push([tube, pop + DECIDED, now[pop] || null]);
      }
    }
    return out;
  }

  // a change as changedFrom names it ("<population> decided": a decision on an undetermined gate) in ``gateSet``:
  // the gate, or the decision (null: none)
  function changeIn(gateSet, tube, pop) {
    const entry = gateSet.tubes[tube] || { gates: {} };
    return pop.endsWith(DECIDED) ? (entry.decided || {})[pop.slice(0, -DECIDED.length)] || null : entry.gates[pop];
  }

  // one of changedFrom's changes put back over the loaded version (a kept draft, or one a newer version refused):
  // a gate, or a decision on a gate the version holds undetermined (null: withdrawn); false where it has no such gate
  function putChange(tube, pop, g) {
    if (pop.endsWith(DECIDED)) {
      const gate = pop.slice(0, -DECIDED.length);
      if (!((S.current.tubes[tube] || {}).undetermined || {})[gate]) return false;
      decided[tube] = decided[tube] || {};
      if (g) decided[tube][gate] = g; else delete decided[tube][gate];
      return true;
    }
    if (!draft[tube] || !(pop in draft[tube])) return false;
    draft[tube][pop] = g;
    return true;
  }

  // a save refused because someone saved a newer version first: load that version and put the
  // reviewer's changed gates back over it as the draft (nothing typed or dragged is lost), naming
  // the gates the newer version changed too; its own gates are drawn dotted where the draft differs
  async function keepDraftOver(refusal) {
    const base = S.current, edited = changedFrom(base);
    await load();
    if (S.current === base) {   // the newer version could not be loaded: the draft is still the page's
      message(refusal + " The newer version could not be loaded; your draft is still on this page.", false);
      return;
    }
    const both = [];
    for (const [tube, pop, g] of edited) {
      const newer = changeIn(S.current, tube, pop);
      if (!putChange(tube, pop, g)) continue;
      if (JSON.stringify(newer) !== JSON.stringify(changeIn(base, tube, pop))) both.push(tube + "/" + pop);
    }
    schedulePreview(true);
    message(refusal + " Your draft is kept over version " + S.current_version + " (your changes: " +
      edited.map((e) => e[0] + "/" + e[1]).join(", ") + ")" + (both.length ? "; version " + S.current_version +
      " changed " + both.join(", ") + " too: its gate is drawn dotted, compare before saving" : "") +
      ". Save again to keep it.", false);
  }

  $("save-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const approval = standingApproval();
    if (approval && !window.confirm("Saving makes version " + (S.current_version + 1) + " and voids the approval for release of version " +
        S.current_version + " by " + signedBy(approval) + ". The new version will need a new approval. Save anyway?")) {
      message("Not saved: the approval of version " + S.current_version + " by " + approval.username + " stands.", false);
      return;
    }
    const body = { base_version: S.current_version, gates: draftBody(), reason: $("reason").value,
      void_approval: approval ? approval.id : null, deviation: $("deviation-box").hidden ? null : $("deviation").value };
    let r = await api(app.dataset.save, body);
    if (r.status === 409 && r.data.approval) {   // approved since this page loaded: ask, naming it; the draft stays
      if (!window.confirm(r.data.error + "\n\nSave anyway? The new version will need a new approval.")) {
        message("Not saved: " + r.data.error.replace(/^saving voids /, "").replace(/: confirm to save anyway.*$/, "") + " stands. Your draft is kept on this page.", false);
        return;
      }
      r = await api(app.dataset.save, Object.assign(body, { void_approval: r.data.approval }));
    }
    if (r.status === 201) {
      message(r.data.message, true); $("reason").value = ""; $("deviation").value = ""; askDeviation([]);
      await load(); keepDraft(); message(r.data.message, true);
    }
    else if (r.status === 409) await keepDraftOver(r.data.error);
    else if (r.status === 400 && r.data.overturns) { askDeviation(r.data.overturns); message(r.data.error + draftNote(r.status), false); }
    else message((r.data.error || ("save failed: HTTP " + r.status)) + draftNote(r.status), false);
  });
  $("reason").addEventListener("input", keepDraft);
  $("deviation").addEventListener("input", keepDraft);
  $("oos-justification").addEventListener("input", keepDraft);
  $("comment").addEventListener("input", keepDraft);
  $("resolutions").addEventListener("input", keepDraft);   // the flags' fields are made by renderQC
  $("overrule").addEventListener("change", keepDraft);     // the tick, made by renderOverrule
  $("justify").addEventListener("input", keepDraft);
  $("reset-button").addEventListener("click", () => {
    for (const [tube, entry] of Object.entries(S.current.tubes)) { draft[tube] = clone(entry.gates); decided[tube] = clone(entry.decided || {}); }
    renderPlots(S.plots, S.populations.current);
    schedulePreview(true);
  });
  $("sign-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const unsaved = changedFrom(S.current);
    if (unsaved.length) {   // the tables show the draft: a signature of the saved version must not look like one of it
      $("sign-password").value = "";
      message("Not signed: the draft has unsaved changes (" + unsaved.map((e) => e[0] + "/" + e[1]).join(", ") +
        ") and a signature signs the saved version " + S.current_version + ". Save the draft as a new version, or reset it, then sign.", false);
      return;
    }
    const oosSent = !$("oos-box").hidden;   // hidden (not "approved for release"): the justification is not sent, and stays
    const meaning = $("meaning").value;
    const r = await api(app.dataset.sign, { version: S.current_version, meaning: meaning,
      password: $("sign-password").value, qc_resolutions: fieldsTyped("data-resolution", "resolution"),
      qc_kind_resolutions: fieldsTyped("data-resolve-all", "resolveAll"), comment: $("comment").value,
      oos_justification: oosSent ? $("oos-justification").value : null,
      overrule_rejection: S.rejection && $("overrule-check") && $("overrule-check").checked ? S.rejection.id : null });
    $("sign-password").value = "";
    if (r.status === 201) {   // clear only what the signature used
      $("comment").value = "";
      if (oosSent) $("oos-justification").value = "";
      if (meaning === "approved for release") {   // only an approval signs the QC flag resolutions
        for (const f of document.querySelectorAll("[data-resolution], [data-resolve-all]")) f.value = "";
      }
      await load(); keepDraft(); message(r.data.message, true);
    }
    else message(r.data.error || ("signature failed: HTTP " + r.status), false);
  });
  $("meaning").addEventListener("change", renderOOS);
  $("justify-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api(app.dataset.justify, { version: S.current_version, deviation: $("justify").value });
    if (r.status === 201) { $("justify").value = ""; await load(); keepDraft(); message(r.data.message, true); }
    else message(r.data.error || ("the justification was not recorded: HTTP " + r.status), false);
  });
  const applyForm = $("apply-form");
  if (applyForm) applyForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const [tube, population] = $("apply-gate").value.split("|");
    const products = Array.from($("apply-products").selectedOptions).map((o) => o.value);
    const body = { tube, population, products, reason: $("apply-reason").value };
    let r = await api(app.dataset.apply, body);
    if (r.status === 409 && r.data.approved) {   // approvals it would void: ask, naming them
      if (!window.confirm(r.data.error + "\n\nApply anyway? Each new version will need a new approval.")) {
        message("Not applied: the approvals of " + r.data.approved.join(", ") + " stand.", false);
        return;
      }
      r = await api(app.dataset.apply, Object.assign(body, { void_approvals: r.data.approvals }));   // those named
    }
    message(r.data.message || r.data.error || ("HTTP " + r.status), r.status === 201);
  });

  load();
})();
