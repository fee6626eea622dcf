// Markdown to safe HTML: marked parses, DOMPurify removes anything that could run
// (scripts, event handlers, javascript: URLs), highlight.js colours code blocks.

import { marked } from "./vendor/marked/marked.esm.js";
import hljs from "./vendor/highlight/core.min.js";
import bash from "./vendor/highlight/languages/bash.min.js";
import diff from "./vendor/highlight/languages/diff.min.js";
import javascript from "./vendor/highlight/languages/javascript.min.js";
import json from "./vendor/highlight/languages/json.min.js";
import python from "./vendor/highlight/languages/python.min.js";
import sql from "./vendor/highlight/languages/sql.min.js";
import typescript from "./vendor/highlight/languages/typescript.min.js";
import xml from "./vendor/highlight/languages/xml.min.js";
import yaml from "./vendor/highlight/languages/yaml.min.js";

const LANGUAGES = { bash, diff, javascript, json, python, sql, typescript, xml, yaml };
for (const [name, grammar] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, grammar);
hljs.configure({ ignoreUnescapedHTML: true });

marked.use({ gfm: true, breaks: true });

const purify = window.DOMPurify;
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

/** Put `text`, read as Markdown, into `element`: sanitised, code highlighted. */
export function renderMarkdown(element, text) {
  element.innerHTML = purify.sanitize(marked.parse(text));
  for (const code of element.querySelectorAll("pre code")) {
    const language = [...code.classList].find((name) => name.startsWith("language-"));
    if (language && hljs.getLanguage(language.slice(9))) hljs.highlightElement(code);
  }
}
