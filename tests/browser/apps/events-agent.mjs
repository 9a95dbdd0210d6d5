// A `command` agent speaking the jsonl protocol (one event object per line
// on stdout): reasoning, text, a tool call and its result, and an event of
// the agent's own (`progress`), so every kind of run event can be read back
// through a client's format. stdin is {"run_id", "prompt", "params", …}.
// With the prompt "flat tool call" the tool call is written in the flat
// shape the README's jsonl example shows ({"id", "name", "arguments"}).
let input = '';
for await (const chunk of process.stdin) input += chunk;
const { prompt } = JSON.parse(input);
const toolCall = prompt === 'flat tool call'
  ? { event: 'tool_call', id: 'c1', name: 'weather', arguments: '{"city":"Paris"}' }
  : { event: 'tool_call', id: 'c1', type: 'function', function: { name: 'weather', arguments: '{"city":"Paris"}' } };
const lines = [
  { event: 'reasoning', text: 'The user wants ' },
  { event: 'reasoning', text: 'the weather.' },
  { event: 'token', text: 'Let me look ' },
  { event: 'token', text: 'that up.' },
  toolCall,
  { event: 'tool_result', id: 'c1', content: { city: 'Paris', temperature: 21 } },
  { event: 'progress', pct: 50 },
  { event: 'token', text: 'It is 21 °C in Paris ✓' },
  { event: 'done', finish_reason: 'stop' },
];
for (const line of lines) process.stdout.write(`${JSON.stringify(line)}\n`);
