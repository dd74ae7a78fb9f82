// Evaluate requests against IAM policies with @cloud-copilot/iam-simulate (a full policy evaluator:
// conditions, aws:ResourceTag/aws:RequestTag, ec2:CreateAction, ForAllValues).
// stdin: JSON [{"id", "policy", "action", "resource", "context": {key: value or [values]}, "resource_policy"?}]
// stdout: JSON [{"id", "result": "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied" | "error", "errors"}]
// IAM_NODE_DIR: the directory where tests/iam/package.json was installed (npm ci), default the cwd.
import { createRequire } from 'node:module'
import path from 'node:path'

const require = createRequire(path.resolve(process.env.IAM_NODE_DIR || process.cwd(), 'simulate.cjs'))
const { runSimulation } = require('@cloud-copilot/iam-simulate')

const ACCOUNT = '123456789012'

async function evaluate(c) {
  const simulation = {
    request: {
      principal: `arn:aws:iam::${ACCOUNT}:user/stillpoint-check`,
      action: c.action,
      resource: { resource: c.resource, accountId: ACCOUNT },
      contextVariables: c.context || {}
    },
    identityPolicies: [{ name: 'policy', policy: c.policy }],
    serviceControlPolicies: [],
    resourceControlPolicies: []
  }
  if (c.resource_policy) simulation.resourcePolicy = c.resource_policy
  const response = await runSimulation(simulation, {})
  if (response.resultType === 'error') {
    return { id: c.id, result: 'error', errors: response.errors }
  }
  return { id: c.id, result: response.overallResult }
}

let input = ''
process.stdin.setEncoding('utf8')
for await (const chunk of process.stdin) input += chunk
const cases = JSON.parse(input)
const out = []
for (const c of cases) out.push(await evaluate(c))
process.stdout.write(JSON.stringify(out))
