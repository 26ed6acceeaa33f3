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
    var version = form.querySelector('input[name="version"]').value.trim();
    var allow = Boolean(overwrite || form.querySelector('input[name="allow_overwrite"]').checked);

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

    var outcome = {
      progress: progress,
      stored: function (record) {
        button.disabled = false;
        progress(file.size, file.size);
        afterChange(msg("stored") + ": " + record.package_name);
      },
      failed: function (error) {
        button.disabled = false;
        showError(error, function () { uploadFile(form, true); });
      }
    };

    bar.hidden = false;
    progress(0, file.size);
    button.disabled = true;
    var above = Number(form.getAttribute("data-resumable-above") || "0");
    if (above > 0 && file.size > above) {
      uploadResumable(form, file, version, allow, outcome);
    } else {
      uploadMultipart(form, file, version, allow, outcome);
    }
  }

  function uploadMultipart(form, file, version, allow, outcome) {
    var data = new FormData();
    if (version) {
      data.append("version", version);
    }
    data.append("allow_overwrite", allow ? "true" : "false");
    data.append("package", file, file.name);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.getAttribute("data-api"));
    xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.setRequestHeader("Accept-Language", acceptLanguage);
    xhr.upload.addEventListener("progress", function (event) {
      outcome.progress(event.loaded, event.lengthComputable ? event.total : file.size);
    });
    xhr.addEventListener("load", function () {
      if (xhr.status >= 200 && xhr.status < 300) {
        outcome.stored(JSON.parse(xhr.responseText));
      } else {
        outcome.failed(parseError(xhr.status, xhr.responseText));
      }
    });
    xhr.addEventListener("error", function () {
      outcome.failed({ code: "NETWORK", detail: msg("network") });
    });
    xhr.send(data);
  }

  /* -- resumable upload of a large file: a small tus 1.0.0 client ---------------
     The file goes to P/uploads/ in TUS_CHUNK pieces. The upload's URL is kept
     in localStorage under the file's fingerprint (target, name, size, last
     modification, version, overwrite), so choosing the same file again after a
     reload asks the registry how far it got (HEAD) and sends only the rest; a
     dropped connection is retried the same way. No credential is kept: the
     session cookie and the CSRF token authenticate every request, as for every
     other write of this page. The PATCH that completes the upload answers the
     registry's pipeline: 204, or the error P/ would have answered. */

  var TUS_CHUNK = 8 * 1024 * 1024;
  var TUS_RETRY_DELAYS = [500, 1000, 3000, 5000];
  var TUS_PREFIX = "registry-upload:";

  function base64Text(value) {
    var bytes = new TextEncoder().encode(value);
    var binary = "";
    for (var i = 0; i < bytes.length; i += 1) {
      binary += String.fromCharCode(bytes[i]);
    }
    return window.btoa(binary);
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch (ignored) {
      return null;  /* not JSON: a proxy's page */
    }
  }

  function tusMetadata(values) {
    return Object.keys(values).map(function (key) { return key + " " + base64Text(values[key]); }).join(",");
  }

  /* localStorage, or null where the browser blocks it: uploads then still
     resume after a dropped connection, only not after a reload. */
  function localStore() {
    try {
      var store = window.localStorage;
      store.getItem(TUS_PREFIX);
      return store;
    } catch (ignored) {
      return null;
    }
  }

  function readEntry(store, key) {
    try {
      var entry = JSON.parse(store.getItem(key));
      return entry && typeof entry.url === "string" && typeof entry.saved === "number" ? entry : null;
    } catch (ignored) {
      return null;
    }
  }

  function forgetStaleUploads(store, keepMs) {
    var now = Date.now();
    for (var i = store.length - 1; i >= 0; i -= 1) {
      var key = store.key(i);
      if (key && key.indexOf(TUS_PREFIX) === 0) {
        var entry = readEntry(store, key);
        if (!entry || !(now - entry.saved < keepMs)) {
          store.removeItem(key);
        }
      }
    }
  }

  function tusRequest(method, url, headers, body, onProgress) {
    return new Promise(function (resolve) {
      var xhr = new XMLHttpRequest();
      xhr.open(method, url);
      xhr.setRequestHeader("Tus-Resumable", "1.0.0");
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      xhr.setRequestHeader("Accept-Language", acceptLanguage);
      Object.keys(headers).forEach(function (name) { xhr.setRequestHeader(name, headers[name]); });
      if (onProgress) {
        xhr.upload.addEventListener("progress", function (event) { onProgress(event.loaded); });
      }
      xhr.addEventListener("load", function () {
        resolve({ status: xhr.status, text: xhr.responseText, header: function (name) {
          return xhr.getResponseHeader(name);
        } });
      });
      xhr.addEventListener("error", function () {
        resolve({ status: 0, text: "", header: function () { return null; } });
      });
      xhr.send(body === undefined ? null : body);
    });
  }

  function uploadResumable(form, file, version, allow, outcome) {
    var target = new URL(form.getAttribute("data-uploads"), window.location.href).href;
    var keepMs = Number(form.getAttribute("data-resumable-keep") || "86400") * 1000;
    var key = TUS_PREFIX + JSON.stringify([target, file.name, file.size, file.lastModified, version, allow]);
    var url = null;
    var offset = 0;
    var attempt = 0;
    var store = localStore();

    function remember() {
      try {
        if (store) {
          store.setItem(key, JSON.stringify({ url: url, saved: Date.now() }));
        }
      } catch (ignored) {
        /* full: this upload resumes after a dropped connection, not after a reload */
      }
    }

    function forget() {
      if (store) {
        store.removeItem(key);
      }
    }

    function networkError() {
      return { code: "NETWORK", detail: msg("network") };
    }

    /* A failure worth trying again (the connection, the server, or another
       request still writing): ask where the upload stands, after a pause. */
    function retry(error) {
      if (attempt >= TUS_RETRY_DELAYS.length) {
        outcome.failed(error);  /* the upload is kept: Upload again resumes it */
        return;
      }
      window.setTimeout(function () { recover(false); }, TUS_RETRY_DELAYS[attempt]);
      attempt += 1;
    }

    function create() {
      var metadata = { filename: file.name, allow_overwrite: allow ? "true" : "false" };
      if (version) {
        metadata.version = version;
      }
      tusRequest("POST", target, { "Upload-Length": String(file.size), "Upload-Metadata": tusMetadata(metadata) })
        .then(function (answer) {
          if (answer.status === 201 && answer.header("Location")) {
            url = new URL(answer.header("Location"), target).href;
            offset = 0;
            remember();
            send();
          } else if (answer.status === 0 || answer.status >= 500) {
            retryCreate(answer);
          } else {
            outcome.failed(parseError(answer.status, answer.text));
          }
        });
    }

    function retryCreate(answer) {
      var error = answer.status === 0 ? networkError() : parseError(answer.status, answer.text);
      if (attempt >= TUS_RETRY_DELAYS.length) {
        outcome.failed(error);
        return;
      }
      window.setTimeout(create, TUS_RETRY_DELAYS[attempt]);
      attempt += 1;
    }

    /* Where does the upload stand? Finished, gone (expired: start again), or
       receiving at the offset HEAD answers. An upload an earlier page saw
       refused is not shown again: the person asks anew, so it starts anew. */
    function recover(earlierPage) {
      tusRequest("GET", url, {}).then(function (answer) {
        if (answer.status === 404) {
          forget();
          create();
          return;
        }
        if (answer.status >= 400 && answer.status < 500 && answer.status !== 423) {
          forget();  /* not this credential's, or refused for good: nothing to resume */
          outcome.failed(parseError(answer.status, answer.text));
          return;
        }
        if (answer.status !== 200) {
          retry(answer.status === 0 ? networkError() : parseError(answer.status, answer.text));
          return;
        }
        var state = parseJson(answer.text) || {};
        if (state.state === "succeeded") {
          forget();
          outcome.stored(state.package);
        } else if (state.state === "failed") {
          forget();
          if (earlierPage) {
            create();
          } else {
            outcome.failed(state.error);
          }
        } else {
          tusRequest("HEAD", url, {}).then(function (head) {
            var at = head.header("Upload-Offset");
            if (head.status === 200 && at !== null) {
              offset = Number(at);
              outcome.progress(offset, file.size);
              send();
            } else if (head.status === 404) {
              forget();
              create();
            } else {
              retry(head.status === 0 ? networkError() : parseError(head.status, head.text));
            }
          });
        }
      });
    }

    function send() {
      var end = Math.min(offset + TUS_CHUNK, file.size);
      var from = offset;
      tusRequest("PATCH", url, { "Upload-Offset": String(from), "Content-Type": "application/offset+octet-stream" },
        file.slice(from, end), function (loaded) { outcome.progress(from + loaded, file.size); })
        .then(function (answer) {
          if (answer.status === 204) {
            attempt = 0;
            offset = Number(answer.header("Upload-Offset"));
            if (offset < file.size) {
              remember();
              outcome.progress(offset, file.size);
              send();
            } else {
              finished();
            }
            return;
          }
          var error = answer.status === 0 ? networkError() : parseError(answer.status, answer.text);
          if (answer.status === 0 || answer.status >= 500 || answer.status === 423 ||
              error.code === "UPLOAD_OFFSET_MISMATCH" || error.code === "UPLOAD_CHECKSUM_MISMATCH") {
            retry(error);
          } else {
            /* the registry refused the package: the upload is over */
            forget();
            outcome.failed(error);
          }
        });
    }

    function finished() {
      forget();
      tusRequest("GET", url, {}).then(function (answer) {
        var state = answer.status === 200 ? parseJson(answer.text) : null;
        if (state && state.package) {
          outcome.stored(state.package);
        } else {
          outcome.failed(answer.status === 0 ? networkError() : parseError(answer.status, answer.text));
        }
      });
    }

    var saved = null;
    if (store) {
      forgetStaleUploads(store, keepMs);
      saved = readEntry(store, key);
    }
    if (saved) {
      url = saved.url;
      recover(true);
    } else {
      create();
    }
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
