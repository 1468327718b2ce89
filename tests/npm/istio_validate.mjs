// Validate Istio objects with @kubernetes-models/istio (its validators are compiled from the
// openAPIV3Schema of Istio's CRDs). One JSON object per stdin line; one JSON line per object on
// stdout: {"errors": [...ajv errors]} or {"missing": "why"} when no model serves the kind.
// Used by tests/k8s_schema.py, which also rejects unknown fields (from the package's .d.ts).
import { createInterface } from "node:readline";

const models = new Map();

async function model(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (!models.has(key)) {
    try {
      const mod = await import(`@kubernetes-models/istio/${apiVersion}/${kind}`);
      models.set(key, mod[kind] ?? null);
    } catch (err) {
      models.set(key, null);
    }
  }
  return models.get(key);
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  let answer;
  try {
    const obj = JSON.parse(line);
    const Model = await model(obj.apiVersion, obj.kind);
    if (!Model) {
      answer = { missing: `no model for ${obj.apiVersion} ${obj.kind}` };
    } else {
      try {
        new Model(obj).validate();
        answer = { errors: [] };
      } catch (err) {
        answer = { errors: err.errors ?? [{ instancePath: "", message: String(err) }] };
      }
    }
  } catch (err) {
    answer = { failed: String(err) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
