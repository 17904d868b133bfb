// Typeset the site's formulas with the KaTeX copy in js/katex/ (version 0.19.1, MIT
// licence in js/katex/LICENSE.txt; katex.min.js, katex.min.css and the woff2 fonts of the
// npm package "katex"). Nothing is loaded from elsewhere, so this works offline.
//
// pymdownx.arithmatex (generic mode) turns $...$ and $$...$$ in the pages and docstrings
// (docs/griffe_jnn.py rewrites reST's math to them) into <span class="arithmatex">\(...\)
// and <div class="arithmatex">\[...\], with the TeX as text. Without script the TeX shows.
(function () {
  "use strict";

  function typeset(root) {
    root.querySelectorAll(".arithmatex").forEach(function (element) {
      if (element.dataset.tex !== undefined) return; // done already
      var text = element.textContent.trim();
      var tex = text.replace(/^\\[([]/, "").replace(/\\[)\]]$/, "");
      element.dataset.tex = tex;
      katex.render(tex, element, {
        displayMode: element.tagName === "DIV",
        throwOnError: false, // an unreadable formula shows its TeX in red, the page still works
      });
    });
  }

  // Material's document$ emits on the first load and on every instant-navigation load.
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () {
      typeset(document);
    });
  } else {
    typeset(document);
  }
})();
