// MathJax 2 for pymdownx.arithmatex (generic mode): \( \) inline, \[ \] display, only inside
// the elements arithmatex marks. Loaded before assets/mathjax/MathJax.js.
window.MathJax = {
  tex2jax: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    ignoreClass: ".*",
    processClass: "arithmatex",
  },
  // the bundled MathJax ships the STIX-Web fonts only
  "HTML-CSS": {
    availableFonts: ["STIX-Web"],
    preferredFont: "STIX-Web",
    webFont: "STIX-Web",
    imageFont: null,
  },
  CommonHTML: { linebreaks: { automatic: true } },
  showMathMenu: false,
  messageStyle: "none",
};
