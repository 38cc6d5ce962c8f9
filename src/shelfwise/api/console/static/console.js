// Shelfwise console: small progressive enhancements only (every page works without script).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // the rail preview: a new placement shows at once
  var placement = document.getElementById("placement");
  if (placement) placement.addEventListener("change", function () { placement.form.submit(); });
  // the rule editor: Tab indents instead of leaving the text area; Ctrl/Cmd+Enter checks the document
  var doc = document.querySelector("textarea[name=document]");
  if (doc) doc.addEventListener("keydown", function (e) {
    if (e.key === "Tab" && !e.shiftKey) {
      e.preventDefault();
      var s = doc.selectionStart;
      doc.setRangeText("  ", s, doc.selectionEnd, "end");
    } else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      var check = document.getElementById("validate");
      if (check) { e.preventDefault(); check.click(); }
    }
  });
  // the first field error in view
  var first = document.querySelector(".field-error");
  if (first && first.scrollIntoView) first.scrollIntoView({block: "center"});
  // buttons that change live traffic ask first
  document.querySelectorAll("#publish, #save-publish, [data-rollback], #exp-stop").forEach(function (b) {
    b.addEventListener("click", function (e) {
      if (!window.confirm(b.textContent.trim() + ": this changes what shoppers see. Go on?")) e.preventDefault();
    });
  });
});
