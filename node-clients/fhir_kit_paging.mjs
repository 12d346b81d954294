// Pages a patient's faxes with fhir-kit-client, unchanged, and prints the ids it got as JSON.
// Usage: node fhir_kit_paging.mjs FHIR_BASE_URL ACCESS_TOKEN PATIENT_ID PAGE_SIZE
import { Client } from 'fhir-kit-client';

const [baseUrl, bearerToken, patient, count] = process.argv.slice(2);
const client = new Client({ baseUrl, bearerToken });
const ids = [];
let pages = 0;
let bundle = await client.search({ resourceType: 'Communication', searchParams: { patient, _count: count } });
while (bundle) {
  pages += 1;
  for (const entry of bundle.entry ?? []) {
    if (entry.search?.mode === 'match') ids.push(entry.resource.id);
  }
  bundle = await client.nextPage({ bundle });
}
console.log(JSON.stringify({ ids, pages }));
