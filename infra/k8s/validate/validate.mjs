// Reads a JSON array of KEDA objects on stdin and validates each against KEDA's CRD schema
// (compiled by @kubernetes-models/keda); prints one line per error and exits 1 if any.
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";

const kinds = { ScaledObject, TriggerAuthentication };
let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = 0;
for (const obj of JSON.parse(input)) {
  const Model = kinds[obj.kind];
  const name = `${obj.kind}/${obj.metadata?.name}`;
  if (obj.apiVersion !== "keda.sh/v1alpha1" || !Model) {
    console.log(`${name}: not a KEDA keda.sh/v1alpha1 kind this validator knows`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
  } catch (err) {
    console.log(`${name}: ${err.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
