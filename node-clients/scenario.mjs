// Runs the Oystehr SDK, unchanged, against a fhir-fax server and prints what happened as JSON.
// Usage: node scenario.mjs BASE_URL MEDIA_URL LOCAL_PDF ACCESS_TOKEN
import Oystehr from '@oystehr/sdk';

const [base, media, , accessToken] = process.argv.slice(2);
const services = { faxApiUrl: `${base}/fax/v1`, projectApiUrl: `${base}/v1`, fhirApiUrl: `${base}/fhir` };
const result = {};

// A fetch that loses the first /send response after the server has handled it, as a dropped
// connection would; the SDK then retries with the same x-oystehr-request-id.
let lostOne = false;
const requestIds = [];
const lossyFetch = async (request) => {
  if (new URL(request.url).pathname.endsWith('/fax/v1/send')) {
    requestIds.push(request.headers.get('x-oystehr-request-id'));
    const response = await fetch(request.clone());
    if (!lostOne && response.ok) {
      lostOne = true;
      return new Response(JSON.stringify({ message: 'gateway lost the answer', code: 503 }), {
        status: 503,
        headers: { 'content-type': 'application/json' },
      });
    }
    return response;
  }
  return fetch(request);
};

const oystehr = new Oystehr({ accessToken, services });
const lossy = new Oystehr({ accessToken, services, fetch: lossyFetch, retry: { delay: 10 } });

// Upload a document with the SDK's own helper, read it back, then fax it.
const letter = new Uint8Array(await (await import('node:fs/promises')).readFile(process.argv[4]));
await oystehr.z3.createBucket({ bucketName: 'sdk-uploads' });
await oystehr.z3.uploadFile({ bucketName: 'sdk-uploads', 'objectPath+': 'referrals/letter.pdf', file: new Blob([letter]) });
const downloaded = new Uint8Array(await oystehr.z3.downloadFile({ bucketName: 'sdk-uploads', 'objectPath+': 'referrals/letter.pdf' }));
result.roundTrip = downloaded.length === letter.length && downloaded.every((byte, i) => byte === letter[i]);
result.listed = await oystehr.z3.listObjects({ bucketName: 'sdk-uploads', 'objectPath+': 'referrals/' });
result.uploadedFax = (
  await oystehr.fax.send({
    media: `${base}/v1/z3/sdk-uploads/referrals/letter.pdf`,
    quality: 'standard',
    recipient: 'Organization/harbor-cardiology',
    sender: 'HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964',
  })
).communicationResource;

const m2m = await oystehr.m2m.create({
  name: 'sdk-client',
  accessPolicy: { rule: [{ resource: ['Fax:Fax:*'], action: ['Fax:Send'], effect: 'Allow' }] },
});
result.m2m = { created: m2m, secret: (await oystehr.m2m.rotateSecret({ id: m2m.id })).secret, me: await oystehr.m2m.me() };

result.onboard = await oystehr.fax.onboard();
result.config = await oystehr.fax.getConfiguration();
const sent = await oystehr.fax.send({
  media,
  quality: 'standard',
  recipient: 'Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c',
  sender: 'HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964',
});
result.sent = sent.communicationResource;
result.readBack = await oystehr.fhir.get({ resourceType: 'Communication', id: sent.communicationResource.id });
result.byNumber = (
  await oystehr.fax.send({
    media,
    quality: 'fine',
    recipientNumber: '+12223334444',
    sender: 'HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964',
    patient: 'Patient/maria-lopez',
  })
).communicationResource;
result.retried = (
  await lossy.fax.send({
    media,
    quality: 'superfine',
    recipient: 'Organization/harbor-cardiology',
    sender: 'HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964',
  })
).communicationResource;
result.retryRequestIds = requestIds;
try {
  await oystehr.fax.send({ media, quality: 'standard', sender: 'HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964' });
  result.error = null;
} catch (error) {
  result.error = { message: error.message, code: error.code };
}
console.log(JSON.stringify(result));
