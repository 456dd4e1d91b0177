// The text-chat pane: the same agent over POST /v1/chat and an EventSource on the
// response's events (status → tool → token → done | error). Markdown is rendered as it
// streams (marked, vendored: marked.LICENSE.md); a dropped connection is resumed by the
// EventSource itself, which sends Last-Event-ID, so the text ends whole. The pane and a
// call share one conversation: the call's conversation_id (session.started) is used
// when there is one, and a call started after a chat goes on with the chat's.

import { marked } from "/static/marked.esm.js";

const $ = (id) => document.getElementById(id);
const va = (window.va = window.va || {});
const chat = (va.chat = { conversationId: null, texts: {}, html: {}, events: [], opens: 0, done: {} });

const escapeHtml = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

// the model's text is not trusted: raw HTML is shown as text, links only to http(s)
marked.use({
  gfm: true,
  renderer: {
    html(token) { return escapeHtml(token.text); },
    link(token) {
      const text = this.parser.parseInline(token.tokens);
      if (!/^(https?:|mailto:)/i.test(token.href)) return text;
      return `<a href="${escapeHtml(token.href)}" target="_blank" rel="noopener noreferrer">${text}</a>`;
    },
    image(token) { return escapeHtml(token.text || ""); },
  },
});

// Markdown of a text still arriving: whole lines are rendered; the line being written
// is shown as plain text after them, unless it is inside a code block (an open fence
// renders as code to the end, which is what it will be).
export function renderPartial(text, final) {
  let stable = text, tail = "";
  if (!final) {
    const cut = text.lastIndexOf("\n") + 1;
    const fences = (text.slice(0, cut).match(/^\s{0,3}(```|~~~)/gm) || []).length;
    if (fences % 2 === 0) { stable = text.slice(0, cut); tail = text.slice(cut); }
  }
  return marked.parse(stable) + (tail ? `<p class="tail">${escapeHtml(tail)}</p>` : "");
}

function chatStatus(text) { $("chat-status").textContent = text || ""; }

function bubble(who) {
  const div = document.createElement("div");
  div.className = `msg ${who}`;
  $("chat-log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function ask(message) {
  const body = { message };
  const cid = chat.conversationId || va.conversationId;
  if (cid) body.conversation_id = cid;
  bubble("user").textContent = message;
  let r, answer;
  try {
    r = await fetch("/v1/chat", { method: "POST", headers: { "Content-Type": "application/json", ...(va.authHeaders || {}) }, body: JSON.stringify(body) });
    answer = await r.json().catch(() => ({}));
  } catch (err) {
    chatStatus("Could not reach the server. Try again.");
    return;
  }
  if (!r.ok) { chatStatus(answer.error || `The server refused the message (${r.status}).`); return; }
  chat.conversationId = answer.conversation_id;
  follow(answer.response_id, answer.events_url);
}

function follow(rid, url) {
  const el = bubble("agent");
  let text = "", pending = false, ended = false;
  chat.texts[rid] = "";
  const paint = (final) => {
    pending = false;
    ended = ended || final;  // a frame still scheduled after the end paints it whole
    el.innerHTML = renderPartial(text, ended);
    chat.html[rid] = el.innerHTML;
  };
  const schedule = () => { if (!pending) { pending = true; requestAnimationFrame(() => paint(false)); } };
  const es = new EventSource(va.withToken ? va.withToken(url) : url);
  chat.current = { rid, source: es };
  es.onopen = () => { chat.opens += 1; };
  const log = (name, data) => chat.events.push({ rid, event: name, data });
  es.addEventListener("status", (e) => { const d = JSON.parse(e.data); log("status", d); chatStatus(d.text); });
  es.addEventListener("tool", (e) => { const d = JSON.parse(e.data); log("tool", d); });
  es.addEventListener("token", (e) => {
    const d = JSON.parse(e.data);
    log("token", d);
    text += d.text;
    chat.texts[rid] = text;
    schedule();
  });
  es.addEventListener("done", (e) => {
    const d = JSON.parse(e.data);
    log("done", d);
    es.close();
    paint(true);
    if (d.finish_reason === "cancelled") el.classList.add("interrupted");
    chat.done[rid] = d.finish_reason;
    chatStatus("");
  });
  es.addEventListener("error", (e) => {
    if (e.data) {  // the server's own error event: the reply failed (what it wrote is kept)
      const d = JSON.parse(e.data);
      log("error", d);
      es.close();
      paint(true);
      el.classList.add("incomplete");
      chat.done[rid] = "error";
      chatStatus(d.message);
      const again = document.createElement("button");
      again.type = "button";
      again.textContent = "Regenerate";
      again.onclick = async () => {
        again.remove();
        const r = await fetch(`/v1/chat/${rid}/regenerate`, { method: "POST", headers: va.authHeaders || {} });
        const answer = await r.json().catch(() => ({}));
        if (r.ok) { el.remove(); follow(answer.response_id, answer.events_url); }
        else chatStatus(answer.error || "Could not regenerate.");
      };
      el.appendChild(again);
      return;
    }
    // the connection dropped: EventSource reconnects by itself with Last-Event-ID
    if (es.readyState === EventSource.CLOSED) { chatStatus("The reply's stream is gone (it may have expired)."); chat.done[rid] = "lost"; }
    else chatStatus("Connection lost; resuming…");
  });
}

$("chat-form").onsubmit = (e) => {
  e.preventDefault();
  const text = $("chat-text").value.trim();
  if (!text) return;
  $("chat-text").value = "";
  ask(text);
};
