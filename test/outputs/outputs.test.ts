// Output references: skopeo's transport syntax, with the OCI distribution grammar for names and tags.
import { test } from "node:test";
import assert from "node:assert/strict";
import { formatOutputRef, parseOutputRef, type OutputRef } from "../../src/outputs/outputs.js";
import { NixociError } from "../../src/util/errors.js";

const D = `sha256:${"ab".repeat(32)}`;

const GOOD: Array<[string, OutputRef]> = [
  ["oci:/tmp/layout", { kind: "oci", dir: "/tmp/layout" }],
  ["oci:/tmp/layout:v1", { kind: "oci", dir: "/tmp/layout", tag: "v1" }],
  ["oci:rel/dir:1.0_rc-2", { kind: "oci", dir: "rel/dir", tag: "1.0_rc-2" }],
  ["oci-archive:/tmp/x.tar", { kind: "oci-archive", file: "/tmp/x.tar" }],
  ["oci-archive:/tmp/x.tar:latest", { kind: "oci-archive", file: "/tmp/x.tar", tag: "latest" }],
  ["docker-archive:/tmp/x.tar", { kind: "docker-archive", file: "/tmp/x.tar" }],
  ["docker-archive:/tmp/x.tar:hello", { kind: "docker-archive", file: "/tmp/x.tar", name: "hello" }],
  [
    "docker-archive:/tmp/x.tar:hello:v1",
    { kind: "docker-archive", file: "/tmp/x.tar", name: "hello", tag: "v1" },
  ],
  [
    "docker-archive:/tmp/x.tar:localhost:5000/a/b:v1",
    { kind: "docker-archive", file: "/tmp/x.tar", name: "localhost:5000/a/b", tag: "v1" },
  ],
  [
    "docker-archive:/tmp/x.tar:127.0.0.1:5000/a/b",
    { kind: "docker-archive", file: "/tmp/x.tar", name: "127.0.0.1:5000/a/b" },
  ],
  ["docker-archive:-:app:v2", { kind: "docker-archive", file: "-", name: "app", tag: "v2" }],
  ["-", { kind: "docker-archive", file: "-" }],
  ["docker://localhost:5000/app", { kind: "docker", registry: "localhost:5000", repository: "app" }],
  [
    "docker://127.0.0.1:5000/nixoci/hello:v1",
    { kind: "docker", registry: "127.0.0.1:5000", repository: "nixoci/hello", tag: "v1" },
  ],
  [
    "docker://registry.example.com/a.b/c__d/e-f---g:x",
    { kind: "docker", registry: "registry.example.com", repository: "a.b/c__d/e-f---g", tag: "x" },
  ],
  [`docker://[::1]:5000/app@${D}`, { kind: "docker", registry: "[::1]:5000", repository: "app", digest: D }],
  [
    "docker://docker.io/app:1",
    { kind: "docker", registry: "docker.io", repository: "library/app", tag: "1" },
  ],
];

test("good references parse (and format back)", () => {
  for (const [s, want] of GOOD) {
    assert.deepEqual(parseOutputRef(s), want, s);
    assert.deepEqual(parseOutputRef(formatOutputRef(want)), want, s);
  }
});

const BAD: Array<[string, RegExp]> = [
  ["", /^output reference: empty/],
  ["/tmp/x.tar", /no transport/],
  ["docker-daemon:app:v1", /unknown transport "docker-daemon"/],
  ["containers-storage:app", /unknown transport/],
  ["OCI:/tmp/x", /unknown transport "OCI"/],
  ["oci:", /empty path/],
  ["oci::v1", /empty path/],
  ["oci:/tmp/x:", /empty tag/],
  ["oci:/tmp/x:bad tag", /invalid tag "bad tag"/],
  ["oci:/tmp/x:-leading", /invalid tag/],
  ["oci:/tmp/x:a/b", /invalid tag/],
  [`oci:/tmp/x:${"a".repeat(129)}`, /invalid tag/],
  ["oci-archive:/tmp/x.tar:v1!", /invalid tag/],
  ["docker-archive:", /empty path/],
  ["docker-archive:/tmp/x.tar:", /empty image name/],
  ["docker-archive:/tmp/x.tar:@0", /@INDEX/],
  [
    "docker-archive:/tmp/x.tar:Hello:v1",
    /invalid repository name "Hello" \(repository names must be lowercase\)/,
  ],
  [`docker-archive:/tmp/x.tar:app@${D}`, /cannot have a digest/],
  ["docker-archive:/tmp/x.tar:app:bad$tag", /invalid tag/],
  ["docker:localhost:5000/app", /expected docker:\/\/HOST/],
  ["docker://app:v1", /no registry host/],
  ["docker://library/app", /no registry host/],
  ["docker://", /no registry host/],
  ["docker://localhost:5000", /no repository name/],
  ["docker://localhost:5000/", /empty repository name/],
  ["docker://localhost:5000/App", /invalid repository name "App" \(repository names must be lowercase\)/],
  ["docker://localhost:5000/a//b", /invalid repository name/],
  ["docker://localhost:5000/a-/b", /invalid repository name/],
  ["docker://localhost:5000/_a", /invalid repository name/],
  ["docker://localhost:5000/app:v 1", /invalid tag/],
  ["docker://localhost:5000/app:", /empty tag/],
  ["docker://localhost:5000/app@sha256:abc", /invalid digest/],
  ["docker://localhost:5000/app@md5:" + "0".repeat(32), /invalid digest/],
  [`docker://localhost:5000/app:v1@${D}`, /both a tag and a digest/],
  ["docker://bad_host.com/app", /invalid registry host/],
  ["docker://-bad.com/app", /invalid registry host/],
  ["docker://127.0.0.1:99999/app", /registry port 99999 is out of range \(1\.\.65535\)/],
  ["docker://localhost:0/app", /registry port 0 is out of range/],
  [
    "docker://user:pw@127.0.0.1:5000/hc/x",
    /credentials in the reference are not taken .* use --creds USER:PASSWORD/,
  ],
  [`docker://localhost:5000/${"a".repeat(250)}`, /longer than 255/],
  ["oci:/tmp/x\n:v1", /control characters/],
];

test("bad references: NixociError naming the reference and the problem", () => {
  for (const [s, problem] of BAD) {
    assert.throws(
      () => parseOutputRef(s),
      (err: unknown) => {
        assert.ok(err instanceof NixociError, `${JSON.stringify(s)}: ${String(err)}`);
        assert.match(err.message, problem, JSON.stringify(s));
        assert.doesNotMatch(err.message, /\n/);
        // A password in the reference is not repeated.
        const shown = s.replace("user:pw@", "user:***@");
        if (s !== "" && !/[\n]/.test(s)) assert.ok(err.message.startsWith(`${shown}: `), err.message);
        assert.doesNotMatch(err.message, /:pw@/);
        return true;
      },
    );
  }
});
