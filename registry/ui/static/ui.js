/* The registry's web interface: local times, copy buttons, uploads with
   progress, delete and restore with a confirm step. Every write goes to the
   registry's JSON routes with the session's CSRF token; their answer (the
   record, or {code, detail}) is shown as it comes. No inline script: the CSP
   allows only this file. */
(function () {
  "use strict";

  var body = document.body;
  var lang = body.getAttribute("data-lang") || "zh";
  var acceptLanguage = lang === "en" ? "en" : "zh-CN";
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";

  function msg(name) {
    return body.getAttribute("data-msg-" + name) || name;
  }

  /* -- outcome: role=status for success, role=alert for failure ---------- */

  function showStatus(text) {
    var alertBox = document.getElementById("alert");
    alertBox.hidden = true;
    alertBox.textContent = "";
    document.getElementById("status").textContent = text;
  }

  function showError(error, retry) {
    document.getElementById("status").textContent = "";
    var alertBox = document.getElementById("alert");
    alertBox.textContent = "";
    var code = document.createElement("strong");
    code.className = "code";
    code.textContent = error.code;
    var detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = error.detail || "";
    alertBox.appendChild(code);
    alertBox.appendChild(document.createTextNode(": "));
    alertBox.appendChild(detail);
    var fields = error.fields_detail || {};
    Object.keys(fields).forEach(function (name) {
      var line = document.createElement("div");
      line.textContent = name + ": " + [].concat(fields[name]).join("; ");
      alertBox.appendChild(line);
    });
    if (error.code === "PACKAGE_ALREADY_EXISTS" && retry) {
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = msg("overwrite");
      button.addEventListener("click", function () {
        button.disabled = true;
        retry();
      });
      alertBox.appendChild(document.createTextNode(" "));
      alertBox.appendChild(button);
    }
    alertBox.hidden = false;
  }

  function parseError(status, text) {
    try {
      var data = JSON.parse(text);
      if (data && typeof data.code === "string") {
        return data;
      }
    } catch (ignored) {
      /* not JSON: a proxy's page */
    }
    return { code: "HTTP " + status, detail: msg("network") };
  }

  /* -- sizes and times ----------------------------------------------------- */

  function humanSize(bytes) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var value = bytes;
    var i = 0;
    while (value >= 1024 && i < units.length - 1) {
      value /= 1024;
      i += 1;
    }
    if (i === 0) {
      return bytes + " B";
    }
    return (value < 10 ? value.toFixed(1) : value.toFixed(0)) + " " + units[i];
  }

  function localTimes(root) {
    var format;
    try {
      format = new Intl.DateTimeFormat(lang === "en" ? "en-GB" : "zh-CN", {
        year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false, timeZoneName: "short"
      });
    } catch (ignored) {
      return;
    }
    root.querySelectorAll("time[datetime]").forEach(function (node) {
      var when = new Date(node.getAttribute("datetime"));
      if (!isNaN(when.getTime())) {
        node.textContent = format.format(when);
      }
    });
  }

  /* -- refreshing the package table after a change -------------------------- */

  function refreshList() {
    var current = document.getElementById("package-list");
    if (!current) {
      return Promise.resolve();
    }
    return fetch(window.location.href, { credentials: "same-origin", headers: { "Accept-Language": acceptLanguage } })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("package-list");
        if (fresh) {
          var adopted = document.importNode(fresh, true);
          current.replaceWith(adopted);
          localTimes(adopted);
        }
      });
  }

  function afterChange(text) {
    showStatus(text);
    if (document.getElementById("package-list")) {
      return refreshList().then(function () { showStatus(text); });
    }
    window.location.reload();
    return Promise.resolve();
  }

  /* -- upload a file, with progress ----------------------------------------- */

  function uploadFile(form, overwrite) {
    var input = form.querySelector('input[type="file"]');
    if (!input.files || input.files.length === 0) {
      input.focus();
      return;
    }
    var file = input.files[0];
    var data = new FormData();
    var version = form.querySelector('input[name="version"]').value.trim();
    if (version) {
      data.append("version", version);
    }
    var allow = overwrite || form.querySelector('input[name="allow_overwrite"]').checked;
    data.append("allow_overwrite", allow ? "true" : "false");
    data.append("package", file, file.name);

    var bar = form.querySelector('[role="progressbar"]');
    var fill = bar.querySelector(".bar");
    var text = form.querySelector(".progress-text");
    var button = form.querySelector('button[type="submit"]');
    var started = Date.now();

    function progress(loaded, total) {
      var percent = total > 0 ? Math.min(100, Math.floor((loaded * 100) / total)) : 0;
      var seconds = Math.max((Date.now() - started) / 1000, 0.001);
      bar.setAttribute("aria-valuenow", String(percent));
      bar.setAttribute("aria-valuetext", percent + "%");
      fill.style.width = percent + "%";
      text.textContent = msg("uploading") + " " + humanSize(loaded) + " / " + humanSize(total) +
        " · " + humanSize(Math.round(loaded / seconds)) + "/s";
    }

    bar.hidden = false;
    progress(0, file.size);
    button.disabled = true;
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.getAttribute("data-api"));
    xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.setRequestHeader("Accept-Language", acceptLanguage);
    xhr.upload.addEventListener("progress", function (event) {
      progress(event.loaded, event.lengthComputable ? event.total : file.size);
    });
    xhr.addEventListener("load", function () {
      button.disabled = false;
      if (xhr.status >= 200 && xhr.status < 300) {
        progress(file.size, file.size);
        var record = JSON.parse(xhr.responseText);
        afterChange(msg("stored") + ": " + record.package_name);
      } else {
        showError(parseError(xhr.status, xhr.responseText), function () { uploadFile(form, true); });
      }
    });
    xhr.addEventListener("error", function () {
      button.disabled = false;
      showError({ code: "NETWORK", detail: msg("network") });
    });
    xhr.send(data);
  }

  /* -- upload from a link ---------------------------------------------------- */

  function uploadLink(form, overwrite) {
    var body = { package_url: form.querySelector('input[name="package_url"]').value.trim() };
    var version = form.querySelector('input[name="version"]').value.trim();
    if (version) {
      body.version = version;
    }
    body.allow_overwrite = Boolean(overwrite || form.querySelector('input[name="allow_overwrite"]').checked);
    var button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    showStatus(msg("uploading") + "…");
    send("POST", form.getAttribute("data-api"), JSON.stringify(body)).then(function (result) {
      button.disabled = false;
      if (result.ok) {
        afterChange(msg("stored") + ": " + JSON.parse(result.text).package_name);
      } else {
        showError(parseError(result.status, result.text), function () { uploadLink(form, true); });
      }
    });
  }

  function send(method, url, json) {
    var headers = { "X-CSRF-Token": csrf, "Accept-Language": acceptLanguage };
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
    }
    return fetch(url, { method: method, credentials: "same-origin", headers: headers, body: json })
      .then(function (response) {
        return response.text().then(function (text) {
          return { ok: response.ok, status: response.status, text: text };
        });
      })
      .catch(function () {
        return { ok: false, status: 0, text: "" };
      });
  }

  /* -- delete and restore, with a confirm step -------------------------------- */

  function askToConfirm(button) {
    var holder = button.parentNode;
    if (holder.querySelector(".confirm-step")) {
      return;
    }
    var step = document.createElement("span");
    step.className = "confirm-step";
    var yes = document.createElement("button");
    yes.type = "button";
    yes.className = "danger";
    yes.textContent = msg("confirm") + " " + button.textContent;
    var no = document.createElement("button");
    no.type = "button";
    no.textContent = msg("cancel");
    step.appendChild(yes);
    step.appendChild(document.createTextNode(" "));
    step.appendChild(no);
    button.hidden = true;
    holder.appendChild(step);
    yes.focus();
    no.addEventListener("click", function () {
      step.remove();
      button.hidden = false;
      button.focus();
    });
    yes.addEventListener("click", function () {
      yes.disabled = true;
      send(button.getAttribute("data-method"), button.getAttribute("data-url")).then(function (result) {
        if (result.ok) {
          afterChange(msg(button.getAttribute("data-done")));
        } else {
          step.remove();
          button.hidden = false;
          showError(parseError(result.status, result.text));
        }
      });
    });
  }

  /* -- wiring ----------------------------------------------------------------- */

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!(target instanceof Element)) {
      return;
    }
    var act = target.closest("button.act");
    if (act) {
      askToConfirm(act);
      return;
    }
    var copy = target.closest("button.copy");
    if (copy) {
      var value = copy.getAttribute("data-copy");
      var done = function () {
        copy.textContent = msg("copied");
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(value).then(done, function () { window.prompt("SHA-256", value); });
      } else {
        window.prompt("SHA-256", value);
      }
    }
  });

  var fileForm = document.getElementById("upload-file");
  if (fileForm) {
    fileForm.addEventListener("submit", function (event) {
      event.preventDefault();
      uploadFile(fileForm, false);
    });
    var drop = document.getElementById("drop");
    var input = fileForm.querySelector('input[type="file"]');
    ["dragenter", "dragover"].forEach(function (name) {
      drop.addEventListener(name, function (event) {
        event.preventDefault();
        drop.classList.add("over");
      });
    });
    ["dragleave", "drop"].forEach(function (name) {
      drop.addEventListener(name, function () {
        drop.classList.remove("over");
      });
    });
    drop.addEventListener("drop", function (event) {
      event.preventDefault();
      if (event.dataTransfer && event.dataTransfer.files.length > 0) {
        input.files = event.dataTransfer.files;
      }
    });
  }

  var linkForm = document.getElementById("upload-link");
  if (linkForm) {
    linkForm.addEventListener("submit", function (event) {
      event.preventDefault();
      uploadLink(linkForm, false);
    });
  }

  var showDeleted = document.getElementById("show-deleted");
  if (showDeleted) {
    showDeleted.addEventListener("change", function () {
      showDeleted.form.submit();
    });
  }

  localTimes(document);
})();
