// A conversation as `msg/history` gives it (ChatGPT's mapping: id -> {message, parent,
// children}) and the one branch of it the page shows.

export function rootOf(mapping) {
  return Object.values(mapping).find((node) => !node.parent || !mapping[node.parent]);
}

/** Ids from the root down to `id` (empty when `id` is not in the tree). */
export function pathTo(mapping, id) {
  const path = [];
  for (let node = mapping[id]; node; node = mapping[node.parent]) path.unshift(node.id);
  return path;
}

/**
 * The branch to show, root first: below each node, the child the user switched to
 * (`chosen[parentId]`), else the one on the way to `focus` (the current node, or a
 * message opened from search), else the newest.
 */
export function branch(mapping, focus, chosen = {}) {
  const towardsFocus = new Set(pathTo(mapping, focus));
  const ids = [];
  for (let node = rootOf(mapping); node;) {
    ids.push(node.id);
    const children = node.children.filter((id) => mapping[id]);
    if (!children.length) break;
    const next =
      children.find((id) => id === chosen[node.id]) ||
      children.find((id) => towardsFocus.has(id)) ||
      children[children.length - 1];
    node = mapping[next];
  }
  return ids;
}

/** What the thread shows of a node: said by a user or an assistant, with its siblings. */
export function shownMessages(mapping, ids) {
  return ids
    .map((id) => mapping[id])
    .filter((node) => node.message && ["user", "assistant"].includes(node.message.author.role))
    .map((node) => {
      const siblings = mapping[node.parent] ? mapping[node.parent].children : [node.id];
      return { node, message: node.message, siblings, index: siblings.indexOf(node.id) };
    });
}

export function textOf(message) {
  return (message.content.parts || []).filter((part) => typeof part === "string").join("\n");
}

/** Why an answer stopped short, or "" when it is whole. */
export function interruption(message) {
  const finish = message.metadata && message.metadata.finish_details;
  if (message.status === "finished_partial_completion" || (finish && finish.type === "interrupted")) {
    return "interrupted";
  }
  if (message.status === "in_progress") return "still being written";
  return "";
}
