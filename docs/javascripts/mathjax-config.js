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
  "HTML-CSS": { availableFonts: ["TeX"], imageFont: null },
  CommonHTML: { linebreaks: { automatic: true } },
  showMathMenu: false,
  messageStyle: "none",
};
