// Validate Kubernetes manifests against the Kubernetes API's schemas, offline: every document
// of every .yaml file in a directory, by the model of its apiVersion and kind
// (kubernetes-models, generated from the API's OpenAPI schemas; unknown fields are errors).
//
// Usage: node validate_k8s.mjs DIR
// Prints one JSON line: {documents: [{file, kind, name, object}]};
// exits 1 with the errors when a document does not validate.

import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";

const dir = process.argv[2];
const documents = [];
const errors = [];
for (const file of readdirSync(dir).filter((f) => f.endsWith(".yaml")).sort()) {
  for (const doc of parseAllDocuments(readFileSync(join(dir, file), "utf8"))) {
    if (doc.errors.length > 0) {
      errors.push(`${file}: ${doc.errors.map((e) => e.message).join("; ")}`);
      continue;
    }
    const object = doc.toJS();
    if (object === null) continue;
    const { apiVersion, kind } = object;
    let Model;
    try {
      Model = (await import(`kubernetes-models/${apiVersion}/${kind}`))[kind];
    } catch (e) {
      errors.push(`${file}: no model for ${apiVersion} ${kind}: ${e.message}`);
      continue;
    }
    try {
      new Model(object).validate();
    } catch (e) {
      errors.push(`${file}: ${kind} ${object.metadata?.name}: ${e.message}`);
      continue;
    }
    documents.push({ file, kind, name: object.metadata?.name, object });
  }
}
if (errors.length > 0) {
  console.error(errors.join("\n"));
  process.exit(1);
}
console.log(JSON.stringify({ documents }));
