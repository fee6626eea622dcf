// The chat page: a sidebar of conversations, the open conversation's branch as a
// thread, and a composer. Everything it shows comes from the API on each load.

import {
  ApiError,
  askStreaming,
  call,
  forgetKey,
  hasSearch,
  listModels,
  onKeyNeeded,
  storedKey,
} from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { branch, interruption, pathTo, shownMessages, textOf } from "./tree.js";

const PAGE_SIZE = 30;
const NEW_TITLE = "New chat";
const MODEL_STORAGE = "gpt-api.model";
const $ = (id) => document.getElementById(id);

const state = {
  conversations: [], // summaries, most recently updated first
  listDone: false,
  search: { query: "", hits: [], cursor: null, done: true },
  loading: false,
  convoId: null,
  tree: null, // the open conversation as msg/history gives it
  focus: null, // the node whose branch is shown (current_node, or a search hit)
  chosen: {}, // parent id -> the child the user switched to
  pending: null, // the exchange being asked: {parentId, prompt, text, note}
  stop: null, // AbortController of the answer being streamed
};

// ---- small helpers ---------------------------------------------------------------

function element(tag, props = {}, ...children) {
  const made = Object.assign(document.createElement(tag), props);
  made.append(...children.filter((child) => child !== null && child !== undefined));
  return made;
}

function button(label, onClick, props = {}) {
  return element("button", { type: "button", textContent: label, onclick: onClick, ...props });
}

function showNotice(text) {
  $("notice").textContent = text;
  $("notice").hidden = false;
}

function hideNotice() {
  $("notice").hidden = true;
}

/** What people should read for an error, by what it means for them. */
function describe(error) {
  if (!(error instanceof ApiError)) return `Something went wrong in the page: ${error.message}`;
  const retry = error.details.retry_after;
  if (error.code === "rate_limited" || error.status === 429) {
    return (
      `Rate limited: ${error.message}` +
      (retry && !/retry in/.test(error.message) ? ` Try again in ${retry} s.` : "")
    );
  }
  if (error.code === "upstream_not_configured") return `${error.message} Then restart the server.`;
  if (error.code === "connection_lost") return `${error.message} What arrived is kept, marked interrupted.`;
  if (error.code.startsWith("upstream") || [502, 504].includes(error.status)) {
    return `The upstream model failed: ${error.message}`;
  }
  return error.message;
}

function report(error) {
  if (!(error instanceof ApiError)) console.error(error); // a fault of the page itself
  showNotice(describe(error));
}

// ---- the key --------------------------------------------------------------------

let keyPrompt = null;

onKeyNeeded(
  (reason) =>
    (keyPrompt ||= new Promise((resolve) => {
      const dialog = $("key-dialog");
      $("key-reason").textContent = reason;
      $("key-input").value = "";
      dialog.returnValue = "";
      dialog.addEventListener(
        "close",
        () => {
          keyPrompt = null;
          const key = $("key-input").value.trim();
          $("change-key").hidden = false;
          resolve(dialog.returnValue === "save" && key ? key : null);
        },
        { once: true },
      );
      dialog.showModal();
    })),
);

// ---- the sidebar ----------------------------------------------------------------

function renderList() {
  const nav = $("conversations");
  nav.replaceChildren(...state.conversations.map(listItem));
  const searching = Boolean(state.search.query);
  nav.hidden = searching;
  $("search-results").hidden = !searching;
  const done = searching ? state.search.done : state.listDone;
  const empty = searching ? !state.search.hits.length : !state.conversations.length;
  $("list-end").textContent = !done
    ? "Loading…"
    : empty
      ? searching
        ? "Nothing found."
        : "No conversations yet."
      : "";
}

function listItem(summary) {
  const open = button(summary.title, () => openConversation(summary.id), {
    className: "convo-open",
    title: `${summary.title}\nupdated ${new Date(summary.update_time).toLocaleString()}`,
  });
  const item = element(
    "div",
    { className: "convo" + (summary.id === state.convoId ? " active" : "") },
    open,
    button("✎", () => startRename(item, summary), {
      className: "icon",
      title: "Rename",
      ariaLabel: "Rename",
    }),
    button("✕", () => remove(summary), { className: "icon", title: "Delete", ariaLabel: "Delete" }),
  );
  item.dataset.id = summary.id;
  return item;
}

function startRename(item, summary) {
  const input = element("input", {
    className: "rename",
    value: summary.title,
    ariaLabel: "New title",
    maxLength: 1000,
  });
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== summary.title) {
      try {
        await call("change/title", { convo_id: summary.id, title });
        summary.title = title;
        if (summary.id === state.convoId) $("title").textContent = title;
      } catch (error) {
        report(error);
      }
    }
    renderList();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

async function remove(summary) {
  if (!confirm(`Delete "${summary.title}" and all its messages?`)) return;
  try {
    await call("delete/conversation", { convo_id: summary.id });
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) return report(error);
  }
  state.conversations = state.conversations.filter((c) => c.id !== summary.id);
  if (summary.id === state.convoId) newChat();
  renderList();
}

async function clearAll() {
  if (!confirm("Delete every conversation? This cannot be undone.")) return;
  try {
    await call("clear/conversations", {});
  } catch (error) {
    return report(error);
  }
  state.conversations = [];
  state.listDone = true;
  newChat();
  renderList();
}

/** The next page of conversations (keyset: after the last one shown), or of search hits. */
async function loadMore() {
  if (state.loading) return;
  const search = state.search;
  if (search.query ? search.done : state.listDone) return;
  state.loading = true;
  try {
    if (search.query) {
      const query = search.query;
      const body = { query, limit: PAGE_SIZE, ...(search.cursor ? { after: search.cursor } : {}) };
      const hits = await call("search", body);
      if (query === state.search.query) {
        // (otherwise the user typed on meanwhile, and the new query loads next)
        search.hits.push(...hits);
        search.cursor = hits.length ? hits[hits.length - 1].cursor : search.cursor;
        search.done = hits.length < PAGE_SIZE;
        $("search-results").append(...hits.map(searchHit));
      }
    } else {
      const last = state.conversations[state.conversations.length - 1];
      const page = await call("conversation", { limit: PAGE_SIZE, ...(last ? { after: last.id } : {}) });
      const known = new Set(state.conversations.map((c) => c.id));
      state.conversations.push(...page.filter((c) => !known.has(c.id)));
      state.listDone = page.length < PAGE_SIZE;
    }
  } catch (error) {
    report(error);
    if (search.query) search.done = true;
    else state.listDone = true;
  } finally {
    state.loading = false;
  }
  renderList();
  fillSidebar();
}

/** Load pages while the end of the list is in sight (infinite scroll). */
function fillSidebar() {
  const scroller = $("sidebar-scroll");
  if ($("list-end").getBoundingClientRect().top < scroller.getBoundingClientRect().bottom + 200) loadMore();
}

/** The newest page again, merged in: titles made in the background, moved conversations. */
async function refreshList() {
  try {
    const page = await call("conversation", { limit: PAGE_SIZE });
    const fresh = new Set(page.map((c) => c.id));
    state.conversations = [...page, ...state.conversations.filter((c) => !fresh.has(c.id))];
    if (state.tree && state.convoId) {
      const open = page.find((c) => c.id === state.convoId);
      if (open) $("title").textContent = state.tree.title = open.title;
    }
    renderList();
  } catch (error) {
    report(error);
  }
}

// ---- search ---------------------------------------------------------------------

let searchTimer = 0;

function onSearchInput() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    const query = $("search").value.trim();
    state.search = { query, hits: [], cursor: null, done: !query };
    $("search-results").replaceChildren();
    renderList();
    if (query) loadMore();
  }, 250);
}

function searchHit(hit) {
  const open = button("", () => openConversation(hit.conversation_id, hit.message_id), { className: "hit" });
  open.append(element("strong", { textContent: hit.title }), element("span", { textContent: hit.snippet }));
  return element("li", {}, open);
}

// ---- the thread -----------------------------------------------------------------

function newChat() {
  state.convoId = state.tree = state.focus = null;
  state.chosen = {};
  $("title").textContent = NEW_TITLE;
  history.replaceState(null, "", location.pathname);
  renderThread();
  renderList();
  $("prompt").focus();
}

async function openConversation(id, focus = null) {
  closeDrawer();
  try {
    const tree = await call("msg/history", { convo_id: id });
    state.convoId = id;
    state.tree = tree;
    state.focus = focus && tree.mapping[focus] ? focus : tree.current_node;
    state.chosen = {};
    state.pending = null;
    $("title").textContent = tree.title;
    history.replaceState(null, "", `#${id}`);
    hideNotice();
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      state.conversations = state.conversations.filter((c) => c.id !== id);
      newChat();
      showNotice("That conversation no longer exists.");
      return;
    }
    throw error;
  }
  renderThread();
  renderList();
  const target = focus && document.querySelector(`[data-id="${CSS.escape(focus)}"]`);
  if (target) {
    target.scrollIntoView({ block: "center" });
    target.classList.add("flash");
  } else {
    scrollToEnd();
  }
}

/** The ids of the branch shown, root first. */
function shownBranch() {
  return state.tree ? branch(state.tree.mapping, state.focus, state.chosen) : [];
}

function renderThread() {
  const thread = $("thread");
  const pending = state.pending;
  let ids = shownBranch();
  if (pending && state.tree) ids = pending.parentId ? pathTo(state.tree.mapping, pending.parentId) : [];
  const shown = state.tree ? shownMessages(state.tree.mapping, ids) : [];
  const articles = shown.map(messageView);
  if (pending) {
    articles.push(bubble("user", pending.prompt));
    articles.push((pending.view = bubble("assistant", pending.text, pending.note)));
  }
  $("welcome").hidden = articles.length > 0;
  thread.replaceChildren($("welcome"), ...articles);
}

function bubble(role, text, note = "") {
  const body = element("div", { className: "body" });
  if (role === "assistant") renderMarkdown(body, text);
  else body.textContent = text;
  const article = element("article", { className: `message ${role}` }, body);
  if (note) article.append(element("p", { className: "note", textContent: note }));
  return article;
}

function messageView({ node, message, siblings, index }) {
  const role = message.author.role;
  const text = textOf(message);
  const article = bubble(role, text, interruption(message));
  article.dataset.id = node.id;
  const meta = message.metadata || {};
  if (role === "assistant") {
    article.title = [meta.model_slug, meta.usage && usageText(meta.usage)].filter(Boolean).join(" · ");
  }
  const bar = element("div", { className: "actions" });
  if (siblings.length > 1) bar.append(siblingSwitch(node, siblings, index));
  if (role === "user") {
    bar.append(button("Edit", () => startEdit(article, node, text), { className: "edit" }));
    if (!node.children.length) bar.append(button("Retry", () => resend(node, text), { className: "retry" }));
  } else if (state.tree.mapping[node.parent]?.message?.author.role === "user") {
    const question = state.tree.mapping[node.parent];
    bar.append(
      button("Regenerate", () => resend(question, textOf(question.message)), { className: "regenerate" }),
    );
  }
  article.append(bar);
  return article;
}

function usageText({ prompt_tokens: prompt, completion_tokens: completion, total_tokens: total }) {
  return `${prompt ?? "?"} prompt + ${completion ?? "?"} completion = ${total ?? "?"} tokens`;
}

function siblingSwitch(node, siblings, index) {
  const go = (step) => () => {
    state.chosen[node.parent] = siblings[index + step];
    renderThread();
  };
  return element(
    "span",
    { className: "siblings" },
    button("‹", go(-1), { disabled: index === 0, ariaLabel: "Previous version", className: "prev" }),
    element("span", { className: "count", textContent: `${index + 1}/${siblings.length}` }),
    button("›", go(1), {
      disabled: index === siblings.length - 1,
      ariaLabel: "Next version",
      className: "next",
    }),
  );
}

function startEdit(article, node, text) {
  const editor = element("textarea", { className: "editor", value: text, ariaLabel: "Edited message" });
  const send = () => {
    const prompt = editor.value.trim();
    if (prompt) ask({ prompt, convo_id: state.convoId, parent_id: node.parent });
  };
  editor.addEventListener("keydown", (event) => sendOnEnter(event, send));
  article.replaceChildren(
    editor,
    element(
      "div",
      { className: "actions" },
      button("Send", send, { className: "primary save" }),
      button("Cancel", () => renderThread(), { className: "cancel" }),
    ),
  );
  editor.focus();
}

/** Ask `question`'s prompt again beside it: a new branch under the same parent. */
function resend(question, prompt) {
  ask({ prompt, convo_id: state.convoId, parent_id: question.parent });
}

function scrollToEnd() {
  const thread = $("thread");
  thread.scrollTop = thread.scrollHeight;
}

// ---- asking ---------------------------------------------------------------------

function setAsking(asking) {
  $("send").hidden = asking;
  $("stop").hidden = !asking;
  document.body.classList.toggle("asking", asking);
}

let renderQueued = false;

function showProgress() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const pending = state.pending;
    if (!pending || !pending.view) return;
    const thread = $("thread");
    const atEnd = thread.scrollHeight - thread.scrollTop - thread.clientHeight < 80;
    renderMarkdown(pending.view.querySelector(".body"), pending.text);
    if (atEnd) scrollToEnd();
  });
}

/** Ask, with the answer streaming into the thread; afterwards the stored tree is shown. */
async function ask(body) {
  if (state.stop) return;
  hideNotice();
  const model = $("model").value;
  if (model) body.model = model;
  const pending = (state.pending = {
    parentId: body.parent_id || null,
    prompt: body.prompt,
    text: "",
    note: "",
    answerId: null,
  });
  let convoId = body.convo_id || null;
  state.stop = new AbortController();
  setAsking(true);
  renderThread();
  scrollToEnd();
  let failure = null;
  try {
    await askStreaming(
      body,
      ({ response }) => {
        convoId = response.conversation_id;
        pending.answerId = response.parent_id;
        pending.text = response.message;
        showProgress();
      },
      state.stop.signal,
    );
  } catch (error) {
    failure = error;
  } finally {
    state.stop = null;
    setAsking(false);
  }
  if (failure) {
    const stopped = failure.name === "AbortError";
    if (!stopped) report(failure);
    // The service names the conversation in an error that comes after it stored the question.
    const named = (failure instanceof ApiError && failure.details.conversation_id) || null;
    if (!(pending.answerId || named || (stopped && convoId))) {
      state.pending = null; // the question was not stored (refused, rate limited): give it back
      if (!$("prompt").value) $("prompt").value = body.prompt;
      growPrompt();
      renderThread();
      return;
    }
    convoId = convoId || named;
    pending.note = stopped ? "stopped" : pending.text ? "interrupted" : "";
    renderThread();
  }
  const reported = Boolean(failure) && failure.name !== "AbortError";
  if (convoId) await showStored(convoId, pending.answerId, pending.parentId, reported);
}

/** The question just asked under `parentId` (it may have failed, and have no answer). */
function newestChild(mapping, parentId) {
  const children = (mapping[parentId] || {}).children || [];
  return children[children.length - 1] || null;
}

/**
 * The conversation as stored, once the answer `answerId` is finished there. After a
 * `reported` failure, the notice keeps saying what failed first.
 */
async function showStored(convoId, answerId, pendingParent, reported) {
  for (let attempt = 0; attempt < 20; attempt++) {
    let tree;
    try {
      tree = await call("msg/history", { convo_id: convoId });
    } catch (error) {
      if (!reported) report(error); // the server is gone: the text so far stays, marked
      return;
    }
    const answer = answerId && tree.mapping[answerId];
    if (!answer || answer.message.status !== "in_progress" || attempt === 19) {
      if (state.convoId && state.convoId !== convoId) return; // the user moved on
      state.pending = null;
      state.convoId = convoId;
      state.tree = tree;
      state.focus = answer ? answerId : newestChild(tree.mapping, pendingParent) || tree.current_node;
      state.chosen = {};
      $("title").textContent = tree.title;
      history.replaceState(null, "", `#${convoId}`);
      renderThread();
      scrollToEnd();
      await refreshList();
      if (tree.title === NEW_TITLE) setTimeout(refreshList, 2000); // a title is being made
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 150)); // the stop is being stored
  }
}

function sendOnEnter(event, send) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
}

function submitPrompt(event) {
  event.preventDefault();
  const prompt = $("prompt").value;
  if (!prompt.trim() || state.stop) return;
  $("prompt").value = "";
  growPrompt();
  const ids = shownBranch();
  const body = { prompt };
  if (state.convoId) Object.assign(body, { convo_id: state.convoId, parent_id: ids[ids.length - 1] });
  ask(body);
}

function growPrompt() {
  const prompt = $("prompt");
  prompt.style.height = "auto";
  const borders = prompt.offsetHeight - prompt.clientHeight;
  prompt.style.height = `${Math.min(prompt.scrollHeight + borders, 240)}px`;
}

// ---- start ----------------------------------------------------------------------

function closeDrawer() {
  $("sidebar").classList.remove("open");
  $("menu").setAttribute("aria-expanded", "false");
}

function toggleDrawer() {
  const open = $("sidebar").classList.toggle("open");
  $("menu").setAttribute("aria-expanded", String(open));
}

async function changeKey() {
  forgetKey();
  state.conversations = [];
  state.listDone = false;
  newChat();
  await loadMore();
}

async function detectFeatures() {
  const [search, models] = await Promise.all([
    hasSearch(),
    listModels().catch((error) => {
      report(error); // no upstream configured: say which variable to set before anyone asks
      return [];
    }),
  ]);
  $("search").hidden = !search;
  if (models.length) {
    const picker = $("model");
    picker.replaceChildren(
      element("option", { value: "", textContent: "Default model" }),
      ...models.map((id) => element("option", { value: id, textContent: id })),
    );
    picker.value = models.includes(localStorage.getItem(MODEL_STORAGE))
      ? localStorage.getItem(MODEL_STORAGE)
      : "";
    picker.hidden = false;
  }
}

async function start() {
  $("composer").addEventListener("submit", submitPrompt);
  $("prompt").addEventListener("keydown", (event) => sendOnEnter(event, () => $("composer").requestSubmit()));
  $("prompt").addEventListener("input", growPrompt);
  $("stop").addEventListener("click", () => state.stop && state.stop.abort());
  $("new-chat").addEventListener("click", () => {
    closeDrawer();
    newChat();
  });
  $("clear").addEventListener("click", clearAll);
  $("change-key").addEventListener("click", changeKey);
  $("change-key").hidden = !storedKey();
  $("menu").addEventListener("click", toggleDrawer);
  $("search").addEventListener("input", onSearchInput);
  $("sidebar-scroll").addEventListener("scroll", fillSidebar, { passive: true });
  $("model").addEventListener("change", () => localStorage.setItem(MODEL_STORAGE, $("model").value));
  growPrompt();
  renderList();
  await loadMore();
  const opened = location.hash.slice(1);
  if (opened) await openConversation(opened).catch(report);
  await detectFeatures();
  document.body.dataset.ready = "true";
  performance.mark("ready"); // when the page is usable, for the first-load measurement
}

start().catch(report);
