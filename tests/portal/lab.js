// The seed lab through the portal, in Debian's headless Chromium (playwright-core; no browser is
// downloaded): sign in, upload an OpenSSL root, verify it with a certificate made by
// `muster certs`, create the enrollment group with the initial twin {"telemetryDelay":"1"}, run
// `muster device simulate`, see it Connected, set desired telemetryDelay to "2" in the twin
// editor and watch the reported value and the cadence follow, see the telemetry chart receive
// points, disable the group (a new device is refused), delete the group and the device (the
// running device is refused). Screenshots of each page go to $SCREENSHOTS when set.
//
// Environment: PORTAL_URL, ADMIN_PASSWORD, MUSTER_BIN, WORK_DIR, SIMULATE_ARGS (JSON array:
// `device simulate --provisioning-host … --id-scope … --trust … --output json`), CHROMIUM
// (default /usr/bin/chromium), SCREENSHOTS (optional directory).
// Prints one JSON line {"ok":true,…} at the end; exits non-zero with the failed step otherwise.
"use strict";

const { chromium } = require("playwright-core");
const { execFileSync, spawn } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");
const readline = require("node:readline");

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const PORTAL = env("PORTAL_URL");
const ADMIN = env("ADMIN_PASSWORD");
const MUSTER = env("MUSTER_BIN");
const WORK = env("WORK_DIR");
const SIM = JSON.parse(env("SIMULATE_ARGS"));
const SHOTS = process.env.SCREENSHOTS || "";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

let step = "start";
const log = (s) => { step = s; console.error(`[portal lab] ${s}`); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function run(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { cwd: WORK, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], ...opts });
}

// The lab's OpenSSL profile: a root CA and device certificates signed by it (RSA 2048).
function makeCertificates() {
  fs.writeFileSync(path.join(WORK, "lab.cnf"),
    "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=x\n[v3_ca]\nsubjectKeyIdentifier=hash\n" +
    "authorityKeyIdentifier=keyid:always,issuer\nbasicConstraints=critical,CA:true\n" +
    "keyUsage=critical,digitalSignature,cRLSign,keyCertSign\n[usr_cert]\nbasicConstraints=CA:FALSE\n" +
    "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n" +
    "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n");
  fs.mkdirSync(path.join(WORK, "certs"), { recursive: true });
  run("openssl", ["genrsa", "-out", "certs/root-ca.key.pem", "2048"]);
  run("openssl", ["req", "-new", "-x509", "-config", "lab.cnf", "-extensions", "v3_ca", "-key", "certs/root-ca.key.pem",
    "-subj", "/CN=Azure IoT Hub CA Cert Test Only", "-days", "30", "-sha256", "-out", "certs/root-ca.pem"]);
  for (const id of ["portal-device-1", "portal-device-2"]) {
    run("openssl", ["genrsa", "-out", `${id}.key`, "2048"]);
    run("openssl", ["req", "-new", "-config", "lab.cnf", "-key", `${id}.key`, "-subj", `/CN=${id}`, "-out", `${id}.csr`]);
    run("openssl", ["x509", "-req", "-in", `${id}.csr`, "-CA", "certs/root-ca.pem", "-CAkey", "certs/root-ca.key.pem",
      "-CAcreateserial", "-extfile", "lab.cnf", "-extensions", "usr_cert", "-days", "30", "-sha256", "-out", `${id}.pem`]);
  }
}

// A running `muster device simulate`: its JSON event lines and its exit.
function simulate(id) {
  const args = [...SIM, "--cert", path.join(WORK, `${id}.pem`), "--key", path.join(WORK, `${id}.key`)];
  const child = spawn(MUSTER, args, { cwd: WORK, stdio: ["ignore", "pipe", "pipe"] });
  const events = [];
  let waiters = [];
  let stderr = "";
  child.stderr.on("data", (d) => { stderr += d; });
  readline.createInterface({ input: child.stdout }).on("line", (line) => {
    let e;
    try { e = JSON.parse(line); } catch (_) { return; }
    events.push(e);
    waiters = waiters.filter((w) => !w(e));
  });
  const exited = new Promise((resolve) => child.on("exit", (code) => resolve({ code, stderr: () => stderr })));
  return {
    child, events, exited,
    // The next event named `name` after index `from`.
    next(name, timeoutMs = 30000, from = 0) {
      const seen = events.slice(from).find((e) => e.event === name);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no '${name}' event from ${id} within ${timeoutMs} ms; saw ${JSON.stringify(events.slice(-5))}; stderr ${stderr}`)), timeoutMs);
        waiters.push((e) => { if (e.event !== name) return false; clearTimeout(timer); resolve(e); return true; });
      });
    },
  };
}

async function within(ms, what, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(300);
  }
}

async function main() {
  log("certificates with openssl");
  makeCertificates();
  if (SHOTS) fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox", "--disable-gpu"] });
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("dialog", (d) => d.accept());
  // Anything the Content-Security-Policy blocked, or any script error, fails the run.
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push(m.text()); });
  const shot = async (name) => { if (SHOTS) await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true }); };
  const heading = (text) => page.getByRole("heading", { level: 1, name: text });
  const noticeOk = async () => { await page.getByRole("status").filter({ hasText: /Saved|uploaded|verified|generated|Deleted|Device/ }).first().waitFor(); };
  let device1;
  try {
    log("1. sign in");
    await page.goto(PORTAL);
    await heading("Sign in to muster").waitFor();
    await shot("01-sign-in");
    await page.getByLabel("User or policy name").fill("admin");
    await page.getByLabel("Password or policy key").fill(ADMIN);
    await page.getByRole("button", { name: "Sign in" }).click();
    await heading("muster").waitFor();

    log("2. upload the OpenSSL root");
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Certificates" }).click();
    await heading("Certificates").waitFor();
    await page.getByLabel("Certificate name").fill("lab-root");
    await page.getByLabel("Certificate .pem or .cer file").setInputFiles(path.join(WORK, "certs/root-ca.pem"));
    await page.getByRole("button", { name: "Save" }).click();
    await noticeOk();
    const row = page.getByRole("row").filter({ hasText: "lab-root" });
    await row.getByText("Unverified").waitFor();
    await shot("02-certificates-unverified");

    log("3. verify it with a certificate made by muster certs");
    await page.getByRole("link", { name: "lab-root" }).click();
    await page.getByRole("button", { name: "Generate Verification Code" }).click();
    const code = await page.getByLabel("Verification Code").inputValue();
    if (!/^[0-9A-Fa-f]{16,}$/.test(code)) throw new Error(`unexpected verification code '${code}'`);
    await shot("03-verification-code");
    run(MUSTER, ["certs", "create-verification-cert", code, "--dir", path.join(WORK, "certs"), "--force"]);
    await page.getByLabel("Verification Certificate .pem or .cer file").setInputFiles(path.join(WORK, "certs/verification-code.pem"));
    await page.getByRole("button", { name: "Verify" }).click();
    await page.locator("#cert-status").getByText("Verified").waitFor();
    await shot("04-certificate-verified");

    log("4. create the enrollment group with the initial twin");
    await page.getByRole("link", { name: "Manage enrollments" }).click();
    await page.getByRole("link", { name: "Add enrollment group" }).click();
    await page.getByLabel("Group name").fill("simulated-devices");
    await page.getByLabel("Certificates", { exact: true }).check();
    await page.getByLabel("CA certificate", { exact: true }).check();
    await page.getByLabel("Primary certificate", { exact: true }).selectOption("lab-root");
    await page.getByLabel("Evenly weighted distribution").isVisible();
    await page.getByLabel("Re-provision and migrate data").check();
    const twin = page.getByLabel("Initial Device Twin State");
    await twin.fill("{not json");
    await page.getByText(/Not valid JSON/).waitFor();
    await twin.fill(JSON.stringify({ tags: {}, properties: { desired: { telemetryDelay: "1" } } }, null, 2));
    await page.getByLabel("Enable", { exact: true }).check();
    await shot("05-add-enrollment-group");
    await page.getByRole("button", { name: "Save" }).click();
    await noticeOk();
    await page.getByRole("link", { name: "simulated-devices" }).waitFor();
    await shot("06-manage-enrollments");

    log("5. muster device simulate provisions");
    device1 = simulate("portal-device-1");
    const registered = await device1.next("registered");
    if (registered.deviceId !== "portal-device-1" || registered.status !== "assigned") throw new Error(`registered: ${JSON.stringify(registered)}`);
    const loaded = await device1.next("twinLoaded");
    if (loaded.desired.telemetryDelay !== "1") throw new Error(`twin: ${JSON.stringify(loaded)}`);
    await device1.next("telemetrySent");
    await page.getByRole("link", { name: "Registration Records" }).first().click();
    await page.getByRole("cell", { name: "portal-device-1" }).first().waitFor();
    await shot("07-registration-records");

    log("6. the device shows Connected");
    await page.getByRole("link", { name: "Devices" }).first().click();
    await within(20000, "device Connected in the list", async () => {
      await page.reload();
      return (await page.locator('tr[data-device="portal-device-1"] td.connection').textContent()) === "Connected";
    });
    await shot("08-devices");
    await page.getByRole("link", { name: "portal-device-1" }).click();
    await heading(/Device portal-device-1/).waitFor();
    if ((await page.locator("#connection-state").textContent()) !== "Connected") throw new Error("device page: not Connected");

    log("8. the telemetry chart receives points");
    const chart = page.locator("canvas.live-chart");
    await within(30000, "chart points", async () => Number(await chart.getAttribute("data-points")) >= 5);
    const rows = await page.locator("table.events tbody tr").count();
    if (rows < 1) throw new Error("no telemetry rows");

    log("7. set desired telemetryDelay to \"2\" in the twin editor");
    const editor = page.getByLabel(/Twin JSON/);
    const current = JSON.parse(await editor.inputValue());
    current.properties.desired.telemetryDelay = "2";
    await editor.fill(JSON.stringify(current, null, 2));
    const before = device1.events.length;
    await page.getByRole("region", { name: "Device twin" }).getByRole("button", { name: "Save" }).click();
    await noticeOk();
    const changed = await device1.next("delayChanged", 30000, before);
    if (changed.telemetryDelay !== 2) throw new Error(`delayChanged: ${JSON.stringify(changed)}`);
    const reported = await within(20000, "reported telemetryDelay 2 in the twin editor", async () => {
      await page.reload();
      const t = JSON.parse(await page.getByLabel(/Twin JSON/).inputValue());
      return String(t.properties.reported.telemetryDelay) === "2" ? t : null;
    });
    // The cadence follows: sends 2 s apart, as the device timed them.
    const at = [];
    for (let i = 0; i < 3; i++) {
      const from = device1.events.length;
      const e = await device1.next("telemetrySent", 30000, from);
      at.push(Date.parse(e.timestamp));
    }
    const gaps = at.slice(1).map((t, i) => (t - at[i]) / 1000);
    if (!gaps.every((g) => g >= 1.9 && g < 3.5)) throw new Error(`2 s cadence expected, gaps ${gaps}`);
    await within(30000, "more chart points", async () => Number(await chart.getAttribute("data-points")) >= 10);
    await page.locator("section.live").scrollIntoViewIfNeeded();
    await shot("09-device");

    log("hub overview and live telemetry pages");
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Overview" }).nth(1).click();
    await heading(/IoT hub/).waitFor();
    if (Number(await page.locator("#stat-connected").textContent()) < 1) throw new Error("overview: no connected device");
    await shot("10-hub-overview");
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Telemetry" }).click();
    await within(20000, "live telemetry page points", async () => Number(await page.locator("canvas.live-chart").getAttribute("data-points")) >= 3);
    await shot("11-live-telemetry");
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Overview" }).first().click();
    await heading("Device Provisioning Service").waitFor();
    await shot("12-dps-overview");

    log("9. disable the group: a new device is refused");
    await page.getByRole("link", { name: "Manage enrollments" }).first().click();
    await page.getByRole("link", { name: "simulated-devices" }).click();
    await page.getByLabel("Disable", { exact: true }).check();
    await page.getByRole("button", { name: "Save" }).click();
    await noticeOk();
    const device2 = simulate("portal-device-2");
    const end2 = await device2.exited;
    if (end2.code === 0 || !end2.stderr().includes("401002")) throw new Error(`a device of a disabled group must be refused: ${end2.code} ${end2.stderr()}`);

    log("10. delete the group and the device: the running device is refused");
    await page.getByRole("link", { name: "simulated-devices" }).click();
    await page.getByRole("button", { name: "Delete" }).click();
    await noticeOk();
    if (await page.getByRole("link", { name: "simulated-devices" }).count() !== 0) throw new Error("group still listed");
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Devices" }).click();
    await page.getByRole("link", { name: "portal-device-1" }).click();
    await page.getByRole("button", { name: "Delete" }).click();
    await noticeOk();
    const end1 = await Promise.race([device1.exited, sleep(30000).then(() => null)]);
    if (!end1 || end1.code === 0) throw new Error(`the deleted device must stop with an error: ${end1 && end1.stderr()}`);

    log("sign out");
    await page.getByRole("button", { name: "Sign out" }).click();
    await heading("Sign in to muster").waitFor();
    await page.goto(new URL("devices", PORTAL).toString());
    await heading("Sign in to muster").waitFor();

    log("narrow screen");
    await page.setViewportSize({ width: 390, height: 844 });
    await page.getByLabel("User or policy name").fill("admin");
    await page.getByLabel("Password or policy key").fill(ADMIN);
    await page.getByRole("button", { name: "Sign in" }).click();
    await heading("Devices").waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 2) throw new Error(`the devices page scrolls sideways on a narrow screen by ${overflow}px`);
    await shot("13-narrow-devices");

    // The portal's own requests never fail in the browser (a refused form would log a 4xx; none is expected).
    if (pageErrors.length) throw new Error(`errors in the page: ${pageErrors.join(" | ")}`);
    console.log(JSON.stringify({ ok: true, reported: reported.properties.reported.telemetryDelay, gaps }));
  } catch (e) {
    if (SHOTS) await page.screenshot({ path: path.join(SHOTS, "failure.png"), fullPage: true }).catch(() => {});
    throw e;
  } finally {
    if (device1) device1.child.kill();
    await browser.close();
  }
}

main().catch((e) => {
  console.error(`[portal lab] failed at step '${step}': ${e.stack || e}`);
  process.exit(1);
});
