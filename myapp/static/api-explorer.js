// Starts Swagger UI from the configuration in the page (served by the app: no CDN, no inline script).
(function () {
  "use strict";
  function read(id) {
    var element = document.getElementById(id);
    return element ? JSON.parse(element.textContent) : null;
  }
  window.addEventListener("load", function () {
    var config = read("swagger-ui-config");
    config.presets = [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset];
    config.plugins = [SwaggerUIBundle.plugins.DownloadUrl];
    var ui = SwaggerUIBundle(config);
    var oauth = read("swagger-ui-oauth-config");
    if (oauth) {
      ui.initOAuth(oauth);
    }
    window.ui = ui;
  });
})();
