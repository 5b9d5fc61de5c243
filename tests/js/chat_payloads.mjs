// Builds the chat request bodies LibreChat's web client POSTs, with the
// client's own code: `createPayload(submission)` from the npm package
// librechat-data-provider (pinned in package.json). Tests use it to drive
// chatgate with exactly what a browser running LibreChat would send.
//
// Usage: node chat_payloads.mjs <mode>   (input: one JSON document on stdin,
// output: one JSON document on stdout; exit 2 with a message on stderr on bad
// input, non-zero on any other error)
//
// Modes:
//   payloads  [{name, endpoint, endpointType?, model?, agent_id?, spec?,
//              promptPrefix?, text?, conversationId?, parentMessageId?,
//              messageId?, responseMessageId?, isTemporary?,
//              addedConvo?: {endpoint, endpointType?, model?, agent_id?,
//                            promptPrefix?, spec?},
//              ephemeralAgent?: {mcp?: [...], execute_code?, file_search?,
//                                web_search?, ...},
//              isRegenerate?, isContinued?, isEdited?}, ...]
//             For each description, builds the TSubmission the way the
//             client's `ask()` does (client/src/hooks/Chat/useChatFunctions.ts)
//             and prints, in input order,
//             [{name, server, payload, body}]:
//               server   the URL path createPayload returns (the client POSTs
//                        the body there, e.g. /api/agents/chat/openAI);
//               payload  createPayload's payload as is (JSON drops the
//                        `undefined` fields, keeps the `null` ones);
//               body     what the client actually sends: useResumableSSE /
//                        useSSE post `removeNullishValues(payload)` (also from
//                        the package), which drops the `null` fields too.
//             Without conversationId the turn starts a new conversation (the
//             client's "new" id, sent as null); a regenerate, continue or
//             edit without one gets a random existing conversationId.
//             `payload.timezone` is the process's (set TZ to pin it);
//             messageId, clientTimestamp, clientRequestId and the agents
//             `key` are fresh on every run, as in the browser.
//   version   {} -> {version: "<installed librechat-data-provider version>"}

import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import {
  Constants,
  EModelEndpoint,
  createPayload,
  parseConvo,
  parseCompactConvo,
  getResponseSender,
  isAgentsEndpoint,
  replaceSpecialVars,
  removeNullishValues,
  isAssistantsEndpoint,
} from 'librechat-data-provider';

class InputError extends Error {}

async function readStdin() {
  const parts = [];
  for await (const part of process.stdin) parts.push(part);
  const raw = Buffer.concat(parts).toString('utf8');
  if (raw.trim() === '') return null;
  try {
    return JSON.parse(raw);
  } catch (e) {
    throw new InputError(`stdin is not JSON: ${e.message}`);
  }
}

const DESCRIPTION_KEYS = new Set([
  'name',
  'endpoint',
  'endpointType',
  'model',
  'agent_id',
  'spec',
  'promptPrefix',
  'text',
  'conversationId',
  'parentMessageId',
  'messageId',
  'responseMessageId',
  'isTemporary',
  'addedConvo',
  'ephemeralAgent',
  'isRegenerate',
  'isContinued',
  'isEdited',
]);
const ADDED_CONVO_KEYS = new Set([
  'endpoint',
  'endpointType',
  'model',
  'agent_id',
  'promptPrefix',
  'spec',
]);

function checkKeys(obj, allowed, where) {
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new InputError(`${where} must be a JSON object`);
  }
  for (const key of Object.keys(obj)) {
    if (!allowed.has(key)) throw new InputError(`${where}: unknown field "${key}"`);
  }
}

function checkString(obj, key, where, required = false) {
  const value = obj[key];
  if (value === undefined || value === null) {
    if (required) throw new InputError(`${where}: "${key}" is required`);
    return;
  }
  if (typeof value !== 'string' || value === '') {
    throw new InputError(`${where}: "${key}" must be a non-empty string`);
  }
}

/** The conversation fields a description sets, as the client's conversation
 * state holds them once the user picked an endpoint, model, agent or spec. */
function conversationFields(desc) {
  const fields = { endpoint: desc.endpoint };
  for (const key of ['endpointType', 'model', 'agent_id', 'spec', 'promptPrefix']) {
    if (desc[key] != null) fields[key] = desc[key];
  }
  return fields;
}

/** The added (multi-convo) conversation, as useAddedResponse's
 * generateConversation builds it: a fresh conversation sharing the root's id,
 * filled by buildDefaultConvo (parseConvo over the chosen setup, then the
 * endpoint and endpointType). */
function buildAddedConvo(added, rootConversationId, where) {
  checkKeys(added, ADDED_CONVO_KEYS, where);
  checkString(added, 'endpoint', where, true);
  for (const key of ADDED_CONVO_KEYS) checkString(added, key, where);
  const setup = conversationFields(added);
  const base = {
    conversationId: rootConversationId ?? Constants.NEW_CONVO,
    title: '',
    endpoint: null,
    createdAt: '',
    updatedAt: '',
  };
  const convo = parseConvo({
    endpoint: added.endpoint,
    endpointType: added.endpointType,
    conversation: setup,
    possibleValues: { models: added.model ? [added.model] : [] },
  });
  const addedConvo = {
    ...base,
    ...convo,
    endpointType: added.endpointType,
    endpoint: added.endpoint,
  };
  if (isAgentsEndpoint(added.endpoint) && added.agent_id) addedConvo.agent_id = added.agent_id;
  return addedConvo;
}

function checkEphemeralAgent(agent, where) {
  if (agent === null || agent === undefined) return;
  if (typeof agent !== 'object' || Array.isArray(agent)) {
    throw new InputError(`${where} must be a JSON object`);
  }
  if (agent.mcp !== undefined) {
    if (!Array.isArray(agent.mcp) || agent.mcp.some((s) => typeof s !== 'string')) {
      throw new InputError(`${where}.mcp must be a list of MCP server names`);
    }
  }
}

/** Mirrors `ask()` in client/src/hooks/Chat/useChatFunctions.ts for one turn,
 * with no endpoints config or user key loaded (so `endpointType` comes from
 * the description, and `key`, `thread_id`, `modelDisplayLabel` are unset for
 * non-agents endpoints). */
function buildSubmission(desc, where) {
  checkKeys(desc, DESCRIPTION_KEYS, where);
  checkString(desc, 'name', where, true);
  checkString(desc, 'endpoint', where, true);
  for (const key of [
    'endpointType',
    'model',
    'agent_id',
    'spec',
    'promptPrefix',
    'conversationId',
    'parentMessageId',
    'messageId',
    'responseMessageId',
  ]) {
    checkString(desc, key, where);
  }
  if (desc.text !== undefined && typeof desc.text !== 'string') {
    throw new InputError(`${where}: "text" must be a string`);
  }
  for (const key of ['isRegenerate', 'isContinued', 'isEdited', 'isTemporary']) {
    if (desc[key] !== undefined && typeof desc[key] !== 'boolean') {
      throw new InputError(`${where}: "${key}" must be a boolean`);
    }
  }
  checkEphemeralAgent(desc.ephemeralAgent, `${where}.ephemeralAgent`);

  const isRegenerate = desc.isRegenerate === true;
  const isContinued = desc.isContinued === true;
  const isEdited = desc.isEdited === true;
  const replaysTurn = isRegenerate || isContinued || isEdited;
  const endpoint = desc.endpoint;
  const endpointType = desc.endpointType;

  // The client's conversation state: a new conversation is "new" until the
  // server assigns an id; regenerate/continue/edit replay an existing one.
  const conversation = {
    conversationId: desc.conversationId ?? (replaysTurn ? randomUUID() : Constants.NEW_CONVO),
    title: replaysTurn ? 'Existing conversation' : 'New Chat',
    ...conversationFields(desc),
  };

  let conversationId = conversation.conversationId;
  const text = (desc.text ?? 'hello').trim();
  if (text === '') throw new InputError(`${where}: "text" is empty; the client sends nothing`);

  if (conversation.promptPrefix) {
    conversation.promptPrefix = replaceSpecialVars({ text: conversation.promptPrefix, user: null });
  }

  // For regenerate/continue the client calls ask({...userMessage}) with the
  // existing user message: its id, its parent and its conversation.
  const messageId = replaysTurn ? (desc.messageId ?? randomUUID()) : (desc.messageId ?? null);
  const intermediateId = randomUUID();
  const clientRequestId = randomUUID();
  let parentMessageId =
    desc.parentMessageId ??
    (conversationId === Constants.NEW_CONVO ? Constants.NO_PARENT : randomUUID());

  if (conversationId === Constants.NEW_CONVO) {
    parentMessageId = Constants.NO_PARENT;
    conversationId = null;
  }

  const convo = parseCompactConvo({ endpoint, endpointType, conversation });
  const endpointOption = Object.assign(
    {
      endpoint,
      endpointType,
      overrideConvoId: undefined,
      overrideUserMessageId: undefined,
    },
    convo,
  );
  if (endpoint !== EModelEndpoint.agents) {
    endpointOption.key = undefined; // getExpiry(): no user-provided key
    endpointOption.thread_id = undefined;
    endpointOption.modelDisplayLabel = undefined;
  } else {
    endpointOption.key = new Date(Date.now() + 60 * 60 * 1000).toISOString();
  }
  const sender = getResponseSender({ model: conversation.model, ...endpointOption });

  const currentMsg = {
    text,
    sender: 'User',
    clientTimestamp: new Date().toLocaleString('sv').replace(' ', 'T'),
    isCreatedByUser: true,
    parentMessageId,
    conversationId,
    messageId: isContinued && messageId ? messageId : intermediateId,
    thread_id: undefined,
    error: false,
    manualSkills: undefined,
    quotes: undefined,
  };

  // Regenerate/continue target the existing response: its id with a
  // trailing "_" (getPreliminaryRegenerateResponseMessageId).
  const responseMessageId = isRegenerate
    ? `${(desc.responseMessageId ?? randomUUID()).replace(/_+$/, '')}_`
    : isEdited
      ? (desc.responseMessageId ?? null)
      : null;
  const initialResponseId =
    responseMessageId ?? `${isRegenerate ? messageId : intermediateId}`.replace(/_+$/, '') + '_';
  const initialResponse = {
    sender,
    text: '',
    endpoint,
    parentMessageId: isRegenerate ? messageId : intermediateId,
    messageId: initialResponseId,
    thread_id: undefined,
    conversationId,
    unfinished: false,
    isCreatedByUser: false,
    model: isAssistantsEndpoint(endpoint)
      ? ''
      : isAgentsEndpoint(endpoint)
        ? (conversation.agent_id ?? '')
        : (conversation.model ?? ''),
    error: false,
    content: [],
  };

  const addedConvo =
    desc.addedConvo == null
      ? undefined
      : buildAddedConvo(desc.addedConvo, conversation.conversationId, `${where}.addedConvo`);

  return {
    conversation: { ...conversation, conversationId },
    endpointOption,
    userMessage: {
      ...currentMsg,
      responseMessageId,
      overrideParentMessageId: isRegenerate ? messageId : null,
    },
    messages: [],
    regenerateMessages: isRegenerate ? [] : undefined,
    isEdited: isEdited || isContinued,
    isContinued,
    isRegenerate,
    initialResponse,
    isTemporary: desc.isTemporary === true,
    ephemeralAgent: desc.ephemeralAgent ?? null,
    editedContent: null,
    addedConvo,
    manualSkills: undefined,
    clientRequestId,
  };
}

function payloads(input) {
  if (!Array.isArray(input)) {
    throw new InputError('payloads expects a JSON array of descriptions on stdin');
  }
  return input.map((desc, i) => {
    const where = `description ${i}${desc && typeof desc.name === 'string' ? ` (${desc.name})` : ''}`;
    let server;
    let payload;
    try {
      ({ server, payload } = createPayload(buildSubmission(desc, where)));
    } catch (e) {
      if (e instanceof InputError) throw e;
      // The package refused the description (e.g. an unknown endpoint name
      // without endpointType: parseCompactConvo has no schema for it).
      throw new InputError(`${where}: ${e.message}`);
    }
    return {
      name: desc.name,
      server,
      payload,
      body: removeNullishValues(payload),
    };
  });
}

function version() {
  const require = createRequire(import.meta.url);
  // The package's exports map hides package.json; walk up from its entry.
  let dir = path.dirname(require.resolve('librechat-data-provider'));
  for (;;) {
    const candidate = path.join(dir, 'package.json');
    try {
      const pkg = JSON.parse(readFileSync(candidate, 'utf8'));
      if (pkg.name === 'librechat-data-provider') return { version: pkg.version };
    } catch {
      // not here; keep walking up
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error('cannot find librechat-data-provider/package.json');
    dir = parent;
  }
}

const modes = { payloads, version };
const mode = modes[process.argv[2]];
if (!mode) {
  process.stderr.write(`usage: node chat_payloads.mjs <${Object.keys(modes).join('|')}>\n`);
  process.exit(2);
}
try {
  const result = mode(await readStdin());
  process.stdout.write(`${JSON.stringify(result)}\n`);
} catch (e) {
  process.stderr.write(`chat_payloads: ${e instanceof InputError ? e.message : (e.stack ?? e)}\n`);
  process.exit(e instanceof InputError ? 2 : 1);
}
