/* A `zhisuan dashboard` link carries a single-use token in the URL fragment (#t=...), which never reaches the
   server or its logs. Post it (in the body) and take it out of the address bar and the history at once. */
(function () {
  "use strict";
  var hash = window.location.hash;
  if (hash.indexOf("#t=") !== 0) { return; }
  var token = decodeURIComponent(hash.slice(3));
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
  var form = document.getElementById("login");
  document.getElementById("token").value = token;
  document.getElementById("link-opening").hidden = false;
  form.submit();
})();
