// Share a result with the system's share sheet (the Web Share API), where the browser
// can share files; the Share button stays hidden everywhere else (most desktop browsers).
// Sets animeganPage.share.
"use strict";

(() => {
  const page = (window.animeganPage ??= {});

  function canShare(file) {
    try {
      return typeof navigator.share === "function" && typeof navigator.canShare === "function" &&
        navigator.canShare({ files: [file] });
    } catch {
      return false; // a browser that throws for files cannot share them
    }
  }

  // button: shown only if `file` can be shared; a click shares it.
  function offer(button, file) {
    button.hidden = !canShare(file);
    button.onclick = async () => {
      try {
        await navigator.share({ files: [file], title: file.name });
      } catch (error) {
        if (error.name === "AbortError") return; // the user closed the share sheet
        document.getElementById("status").textContent = `Could not share ${file.name}: ${error.message}`;
      }
    };
  }

  page.share = { offer, canShare };
})();
